"""Compare dictionaries by their evaluation results (SAEBench-style table and plots against L0).

  python -m experiments.compare --out=runs/compare runs/k16 runs/k32 runs/k64

Each RUN_DIR is an eval output directory (it holds evals/*.json). Writes OUT/table.csv,
OUT/table.md and OUT/plots/<metric>.png.
"""

from absl import flags

from experiments import cli

_OUT = flags.DEFINE_string("out", None, "Where the table and plots go.", required=True)


def main(argv):
    from jaxsae.evals import compare

    run_dirs = argv[1:]
    if not run_dirs:
        raise ValueError("name at least one run directory (each holding evals/*.json)")
    rows = compare.collect(run_dirs)
    paths = compare.write(rows, _OUT.value)
    print(open(paths["md"]).read())
    print(f"wrote {len(paths) - 2} plots to {_OUT.value}/plots")


if __name__ == "__main__":
    cli.run(main)
