-- The name-reservation table of examples/namecheck.
--
-- A name may be active (expires_at in the future) only once at a time, but is
-- reusable after it expires. No UNIQUE constraint can say that, so there is
-- none on name: txlock.Run's lock around the check-then-insert keeps the
-- invariant, and the index makes the check cheap.

-- +goose Up
CREATE TABLE name_reservations (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL,
    owner      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX name_reservations_name_expires_at ON name_reservations (name, expires_at);

-- +goose Down
DROP TABLE name_reservations;
