// Package dbpgx is the name-reservation repository of the sqlc example in
// sqlc's pgx/v5 flavour: New takes a DBTX, which *pgxpool.Pool, *pgx.Conn
// and pgx.Tx satisfy, so the same queries run inside txlockpgx.Run on the
// pgx.Tx it gives the body, unchanged. Its other files are written by hand
// as sqlc generates them from ../query.sql (see ../sqlc.yaml), doc comments
// included: sqlc documents only the queries.
package dbpgx
