import sqlite3

AUDIT_TABLE = "audit_log"
COLUMNS = "id, actor, action, created_at"


def latest_entries(db_path: str, limit: int):
    conn = sqlite3.connect(db_path)
    query = "SELECT " + COLUMNS + " FROM " + AUDIT_TABLE + " ORDER BY id DESC LIMIT ?"
    return conn.execute(query, (limit,)).fetchall()


def purge_before(conn, cutoff: str) -> None:
    table = "audit_log"
    conn.execute(f"DELETE FROM {table} WHERE created_at < ?", (cutoff,))
