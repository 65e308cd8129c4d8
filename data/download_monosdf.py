"""MonoSDF's preprocessed scenes with Omnidata depth and normal cues: DTU, Replica, ScanNet.

    python data/download_monosdf.py --only dtu       # -> data/monosdf/dtu/scanNN/ (384x384 crops, cues)
    python data/download_monosdf.py --only replica   # -> data/monosdf/replica/scanN/
    python data/download_monosdf.py --only scannet   # -> data/monosdf/scannet/scanN/

The URLs are those of MonoSDF's scripts/download_dataset.sh (autonomousvision/monosdf). Each scan
folder is a `monosdf` capture (cameras.npz, XXXXXX_rgb.png, _depth.npy, _normal.npy, _mask.npy).
"""

from __future__ import annotations

import sys

from fetch import Archive, Dataset, main

BASE = "https://s3.eu-central-1.amazonaws.com/avg-projects/monosdf/data"

DATASET = Dataset(
    title="MonoSDF's preprocessed DTU / Replica / ScanNet",
    default_out="monosdf",
    archives=(
        Archive("dtu", f"{BASE}/DTU.tar", "DTU.tar", None, (("DTU/scan*", "dtu/*"),)),
        Archive("replica", f"{BASE}/Replica.tar", "Replica.tar", None, (("Replica/scan*", "replica/*"),)),
        Archive("scannet", f"{BASE}/scannet.tar", "scannet.tar", None, (("scannet/scan*", "scannet/*"),)),
    ),
    after=["next: recon check data/monosdf/dtu/scan24"],
)

if __name__ == "__main__":
    sys.exit(main(DATASET))
