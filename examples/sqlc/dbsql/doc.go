// Package dbsql is the name-reservation repository of the sqlc example in
// sqlc's database/sql flavour: New takes a DBTX, which *sql.DB, *sql.Conn
// and *sql.Tx satisfy, so the same queries run inside txlock.Run on the
// *sql.Tx it gives the body, unchanged. Its other files are written by hand
// as sqlc generates them from ../query.sql (see ../sqlc.yaml), doc comments
// included: sqlc documents only the queries.
package dbsql
