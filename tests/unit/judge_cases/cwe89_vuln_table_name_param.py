def purge_before(conn, table, cutoff):
    # The table name is the caller's text, pasted into the statement.
    conn.execute(f"DELETE FROM {table} WHERE created_at < ?", (cutoff,))
