-- Queries of the name-reservation example, for sqlc (see sqlc.yaml). The
-- schema is the migrations package's (../../migrations/postgres).

-- name: NameActive :one
-- NameActive reports whether name has a reservation that has not expired.
SELECT EXISTS (
    SELECT 1 FROM name_reservations
    WHERE name = $1 AND expires_at > now()
) AS active;

-- name: InsertReservation :one
-- InsertReservation reserves a name for owner until expires_at.
INSERT INTO name_reservations (name, owner, expires_at)
VALUES ($1, $2, $3)
RETURNING id, name, owner, created_at, expires_at;

-- name: ActiveReservations :many
-- ActiveReservations lists the reservations of name that have not expired.
SELECT id, name, owner, created_at, expires_at FROM name_reservations
WHERE name = $1 AND expires_at > now()
ORDER BY id;

-- name: ExpireReservation :exec
-- ExpireReservation ends owner's active reservation of name now.
UPDATE name_reservations SET expires_at = now()
WHERE name = $1 AND owner = $2 AND expires_at > now();
