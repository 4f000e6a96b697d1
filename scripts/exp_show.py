"""`make exp-show`: the experiments side by side with the columns a user compares.

DVC's `dvc exp show` has over 100 columns here (every param, every dependency hash, six scores per
variant), so in an 80-column terminal every cell is "…". This asks DVC for the same table as CSV
with `--only-changed` (the params and scores that differ between the rows), drops the dependency
hashes and the secondary scores, and prints it with short headers: `three_conv val_accuracy` for
`reports/metrics/three_conv.json:val_accuracy`.

    python scripts/exp_show.py [dvc exp show options, e.g. -A or --sort-by ...]
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pandas as pd

DROP = r"[^:]*/[^:]*$|models$|(.*:)?test_(loss|macro_f1|errors|images)$|Created"
METRIC = re.compile(r"^reports/metrics/(?P<variant>[^/]+)\.json:(?P<score>.+)$")


def short_header(name: str) -> str:
    """`reports/metrics/<variant>.json:<score>` -> `<variant> <score>`; params keep their dotted names."""
    match = METRIC.match(name)
    return f"{match['variant']} {match['score']}" if match else name


def experiments_table(extra: list[str]) -> pd.DataFrame:
    shown = subprocess.run(["dvc", "exp", "show", "--csv", "--only-changed", "--drop", DROP, *extra],
                           capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        sys.stderr.write(shown.stderr)
        raise SystemExit(shown.returncode)
    table = pd.read_csv(io.StringIO(shown.stdout), dtype=str, keep_default_na=False)
    table["Experiment"] = [name or rev for name, rev in zip(table["Experiment"], table["rev"], strict=True)]
    table = table.drop(columns=[column for column in ("rev", "typ", "parent", "State", "Executor") if column in table])
    return table.rename(columns=short_header)


if __name__ == "__main__":
    print(experiments_table(sys.argv[1:]).to_string(index=False))
