-- The name-reservation table of examples/namecheck, for embedded SQLite.
--
-- As in the Postgres schema there is no UNIQUE constraint on name: a name is
-- reusable once it expires. Times are TEXT as modernc.org/sqlite writes a
-- time.Time with _time_format=sqlite ("2006-01-02 15:04:05.999999999-07:00").
-- Bind them in UTC (t.UTC(): the driver keeps the value's own zone), and
-- compare with bound times, not SQLite's datetime('now') (another format):
-- then comparing the text compares the instants, whatever the width of the
-- fraction, because '+' (the UTC offset) sorts before '.' and every digit.

-- +goose Up
CREATE TABLE name_reservations (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX name_reservations_name_expires_at ON name_reservations (name, expires_at);

-- +goose Down
DROP TABLE name_reservations;
