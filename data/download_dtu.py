"""DTU (49 or 64 views per scan, 1600x1200, with object masks) in the IDR or NeuS layout.

    python data/download_dtu.py                    # IDR's DTU.zip -> data/dtu/scanNN/ (cameras.npz, image/, mask/)
    python data/download_dtu.py --only neus        # NeuS's data_DTU.zip -> data/dtu/dtu_scanNN/ (cameras_sphere.npz, image/, mask/)
    python data/download_dtu.py --only idr --from-file ~/Downloads/DTU.zip

Each scan folder is a `dtu` capture: `recon fit data/dtu/scan24 --out runs/scan24`.
"""

from __future__ import annotations

import sys

from fetch import Archive, Dataset, main

DATASET = Dataset(
    title="DTU in the IDR / NeuS layout (15 scans with masks)",
    default_out="dtu",
    archives=(
        Archive("idr", "https://www.dropbox.com/s/ujmakiaiekdl6sh/DTU.zip?dl=1", "DTU.zip", None,
                (("DTU/scan*", "*"),),
                note="IDR's archive (lioryariv/idr, data/download_data.sh): DTU/scanNN/{cameras.npz,image,mask}"),
        Archive("neus", "https://www.dropbox.com/sh/w0y8bbdmxzik3uk/AAAaZffBiJevxQzRskoOYcyja?dl=1", "neus_data.zip",
                None, (("dtu_scan*", "*"),), inner="data_DTU.zip",
                note="NeuS's public folder (Totoro97/NeuS), which holds data_DTU.zip: dtu_scanNN/{cameras_sphere.npz,"
                     "image,mask}; --from-file takes the folder's zip"),
    ),
    after=["next: recon check data/dtu/<scan>   (then recon fit data/dtu/<scan> --out runs/<scan>)"],
)

if __name__ == "__main__":
    sys.exit(main(DATASET))
