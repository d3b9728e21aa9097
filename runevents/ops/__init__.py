"""Operations on the log: replay, backfill, dead letters."""
