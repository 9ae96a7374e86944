"""``rmtprune compare PATH...``: tables, statistical tests and figures from run or sweep folders
(rmtprune.report.compare). Damaged files reach the user as one line, never a traceback."""

from __future__ import annotations

import math
from pathlib import Path

from rmtprune.commands.common import Parser, debugging, err, formats, unexpected
from rmtprune.errors import UserError


def parser() -> Parser:
    ap = Parser(prog="rmtprune compare", description="Tables, statistical tests and figures comparing normal "
                "and pruned training across seeds, from run or sweep folders.")
    ap.add_argument("paths", nargs="+", type=Path, help="run folders, sweep folders, or folders above them")
    ap.add_argument("--by", default=None, help="comma-separated config keys to group by (default: every key that "
                    "differs between runs except the seed and the pruning settings)")
    ap.add_argument("--metric", default="test_acc", choices=["test_acc", "train_acc", "test_loss", "train_loss"])
    ap.add_argument("--format", default="csv,md", help="files to write: csv (comparison.csv, curves.csv), md "
                    "(comparison.md); default csv,md")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the single PATH given, else "
                    "./comparison)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    ap.add_argument("--finetune", action="store_true", help="also fine-tune the magnitude-pruned normal models "
                    "(as many epochs as the pruned arm trained after its last event; needs model.pt or a cached value)")
    ap.add_argument("--equivalence", type=float, default=None, metavar="DELTA", help="also test equivalence within "
                    "±DELTA (points for accuracies, e.g. 0.3; the metric's units otherwise): two one-sided t tests, "
                    "Welch and paired, with the 90%% interval of each difference")
    ap.add_argument("--trust-model-code", action="store_true", help="for the magnitude baseline, rebuild a custom "
                    "model from the class its model.pt names (imports and runs that code: only for runs you trust)")
    return ap


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from rmtprune.report.compare import compare, print_table, write_outputs

    fmts = formats(args.format, ("csv", "md"))
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise UserError(f"no such folder: {', '.join(missing)}")
    if args.equivalence is not None and not (math.isfinite(args.equivalence) and args.equivalence > 0):
        raise UserError(f"--equivalence {args.equivalence}: give a positive margin, e.g. --equivalence 0.3 (points)")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    where = ", ".join(map(str, args.paths))
    try:
        cmp = compare(args.paths, by=by, metric=args.metric, finetune=args.finetune, equivalence=args.equivalence,
                      trust_model_code=args.trust_model_code)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a damaged file the reader did not foresee: name the folders, not a traceback
        if debugging():
            raise
        raise UserError(unexpected(exc, f"cannot read the runs under {where} (a damaged summary.json, "
                                        f"metrics.csv, spectra.npz or redirect.json?)")) from None
    cmp.command = "rmtprune compare " + " ".join(argv)
    if cmp.table.empty:
        for p in cmp.problems:
            err(f"{p['folder']}: {p['reason']}")
        raise UserError(f"no finished runs under {where}")
    out = args.out or (args.paths[0] if len(args.paths) == 1 and args.paths[0].is_dir() else Path("comparison"))
    try:
        written = write_outputs(cmp, out, fmts, plots=not args.no_plots)
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror or exc}); choose another folder with --out") from None
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debugging():
            raise
        raise UserError(unexpected(exc, f"cannot write the comparison of {where}")) from None
    print_table(cmp)
    print(f"wrote {len(written)} files to {out}")
    return 0
