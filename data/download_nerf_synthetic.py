"""NeRF-synthetic (Blender): eight objects, 100 train / 100 val / 200 test views of 800x800 RGBA.

    python data/download_nerf_synthetic.py --from-file ~/Downloads/nerf_synthetic.zip

The official archive lives on Google Drive, which answers a plain download of a large file with a
confirmation page: download it in a browser (the link below) and pass it with --from-file. It unpacks
to data/nerf_synthetic/<object>/ (transforms_{train,val,test}.json + PNGs), each a `nerf-synthetic`
capture: `recon fit data/nerf_synthetic/lego --out runs/lego --downscale 4`.
"""

from __future__ import annotations

import sys

from fetch import Archive, Dataset, main

DATASET = Dataset(
    title="NeRF-synthetic (Mildenhall et al. 2020)",
    default_out="nerf_synthetic",
    archives=(
        Archive("nerf_synthetic", "https://drive.google.com/uc?id=18JxhpWD-4ZmuFKLzKlAw-w5PpzZxXOcG&export=download",
                "nerf_synthetic.zip", None, (("nerf_synthetic/*", "*"),),
                note="Google Drive (the NeRF authors' folder 128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1): download in a "
                     "browser, then --from-file"),
    ),
    after=["next: recon check data/nerf_synthetic/lego --downscale 4"],
)

if __name__ == "__main__":
    sys.exit(main(DATASET))
