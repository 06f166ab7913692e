package txlockpgx

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txlock/txlock/internal/pgprobe"
)

// pools remembers, per pool, whether it can be asked what became of a
// transaction (see txlock.CommitCheck).
var pools pgprobe.Cache[pgxpool.Pool]

// poolIsPostgres probes p once, on a connection of the pool: Run asks
// before an attempt holds one, so a pool whose connections are all in use
// makes the probe wait its turn, as BEGIN would.
func poolIsPostgres(ctx context.Context, p *pgxpool.Pool) bool {
	return pools.Ask(ctx, p, func(ctx context.Context) (bool, error) {
		var yes bool
		err := p.QueryRow(ctx, pgprobe.Query).Scan(&yes)
		return yes, err
	})
}
