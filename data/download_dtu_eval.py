"""DTU's official evaluation files: the structured-light reference points and the observation masks.

    python data/download_dtu_eval.py                  # both archives -> data/dtu_eval/
    python data/download_dtu_eval.py --only points --from-file ~/Downloads/Points.zip

Unpacks to the layout of DTU's MATLAB evaluation ("MVS Data") that its Python ports read:

    data/dtu_eval/Points/stl/stl024_total.ply     reference points of scan 24 (mm, DTU's world frame)
    data/dtu_eval/ObsMask/ObsMask24_10.mat        observation mask (ObsMask, BB, Res) of scan 24
    data/dtu_eval/ObsMask/Plane24.mat             the table plane of scan 24

SampleSet.zip is large because it also holds sample reconstructions and the MATLAB code;
only ObsMask/ is kept. Points.zip holds every scan's reference points.
"""

from __future__ import annotations

import sys

from fetch import Archive, Dataset, main

BASE = "http://roboimagedata2.compute.dtu.dk/data/MVS"

DATASET = Dataset(
    title="DTU MVS evaluation files (Aanaes et al. 2016)",
    default_out="dtu_eval",
    archives=(
        Archive("masks", f"{BASE}/SampleSet.zip", "SampleSet.zip", None, (("SampleSet/MVS Data/ObsMask", "ObsMask"),)),
        Archive("points", f"{BASE}/Points.zip", "Points.zip", None, (("Points/stl", "Points/stl"),)),
    ),
    after=["next: recon eval MESH --dtu-scan 24 --dtu-dir data/dtu_eval"],
)

if __name__ == "__main__":
    sys.exit(main(DATASET))
