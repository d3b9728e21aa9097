"""`make bench`: `python -m bench [--quick] [--fsync]` runs every benchmark in this directory."""

from __future__ import annotations

from bench import jsonl_put

if __name__ == "__main__":
    jsonl_put.main()
