"""Write the built-in two-scanner quantitative map dataset, with paired ground truth.

Subjects are deformed copies of the MNI ICBM152 2009a template (shipped with nilearn), each
scanned once on scanner A and once on scanner B. By default A = SIGNA and B = Optima MR450w
(1.5 T GE, as in the thesis); they differ in T1 by 3-7 % through a value-dependent bias, a
residual B1 field, noise, resolution and ringing, slice profile, head position and clipping of
long T1. Written (values in ms for T1/T2, % for PD):

  OUT/<scanner>/<subject>[_<MAP>].nii.gz            (--format nifti)
  OUT/dicom/<scanner>/<subject>/<MAP>/IM_*.dcm       (--format dicom)
  OUT/_truth/<scanner>/<subject>[_<MAP>].nii.gz     the other scanner's session with <scanner>'s
                                                    effects, noise-free, on that session's grid
  OUT/_tissue/<scanner>/<subject>_labels.nii.gz     0 bg, 1 CSF, 2 GM, 3 WM, 4 other head tissue
  OUT/simulation.json                               parameters, scanner profiles, effect size
"""


def add_arguments(parser):
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty output folder")
    parser.add_argument("--subjects", type=int, default=12, help="number of subjects (default: 12)")
    parser.add_argument("--slices", type=int, default=27, help="axial slices of 4 mm (default: 27)")
    parser.add_argument("--size", type=int, default=256,
                        help="in-plane pixels on a 240 mm field of view (default: 256, i.e. 0.9375 mm)")
    parser.add_argument("--format", dest="fmt", choices=("nifti", "dicom"), default="nifti",
                        help="format of the maps; truth and labels are always NIfTI (default: nifti)")
    parser.add_argument("--maps", default="T1", help="comma-separated map types among T1,T2,PD (default: T1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output is a function of it (default: 0)")
    parser.add_argument("--scanners", default="default", choices=("default", "alternative"),
                        help="scanner pair: 'default' = SIGNA -> Optima MR450w (thesis), 'alternative' = "
                             "Ingenia -> MAGNETOM Aera with other effect shapes (default: default)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel processes (default: up to 2 on Linux); the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it holds a previous simulation (simulation.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    from harmonize.simulate.generate import simulate

    summary = simulate(args.out_dir, subjects=args.subjects, slices=args.slices, size=args.size, fmt=args.fmt,
                       maps=args.maps, seed=args.seed, scanners=args.scanners, progress=not args.quiet,
                       overwrite=args.overwrite, workers=args.workers)
    a, b = summary["source"], summary["target"]
    for map_type, value in summary["mean_abs_rel_diff"].items():
        print(f"{map_type}: mean absolute relative difference {a} vs truth on {b} in the brain "
              f"(CSF+GM+WM), averaged over {summary['parameters']['subjects']} subjects: {100 * value:.2f} %")
    print(f"wrote {args.out_dir} in {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("simulate"))
