"""The read tables: schema, migrations, the query module (the read side), shared writes, the sql store."""
