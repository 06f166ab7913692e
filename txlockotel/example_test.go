package txlockotel_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	"github.com/txlock/txlock"
	"github.com/txlock/txlock/txlockotel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// Example traces a Run. In a program the tracer provider would export to a
// collector (or be the global one, which New uses by default); here a
// recorder keeps the spans to print them.
func Example() {
	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	// Once, at startup: the option is shared by every Run.
	traced := txlockotel.New(txlockotel.WithTracerProvider(tp))

	db, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE names (name TEXT PRIMARY KEY)`); err != nil {
		log.Fatal(err)
	}

	ctx, request := tp.Tracer("example").Start(context.Background(), "POST /names")
	err = txlock.Run(ctx, db, []string{"name:alice"}, func(ctx context.Context, tx *sql.Tx) error {
		// Statements run with ctx: otelsql's spans for them would be
		// children of the attempt span.
		_, err := tx.ExecContext(ctx, `INSERT INTO names (name) VALUES (?)`, "alice")
		return err
	}, traced)
	request.End()
	if err != nil {
		log.Fatal(err)
	}

	names := map[string]string{}
	for _, s := range recorder.Ended() {
		names[s.SpanContext().SpanID().String()] = s.Name()
	}
	for _, s := range recorder.Ended() {
		parent := names[s.Parent().SpanID().String()]
		if parent == "" {
			parent = "-"
		}
		var verdict, system string
		for _, kv := range s.Attributes() {
			switch kv.Key {
			case "txlock.verdict":
				verdict = kv.Value.AsString()
			case "db.system.name":
				system = kv.Value.AsString()
			}
		}
		fmt.Printf("%s (parent %s) verdict=%s db.system.name=%s\n", s.Name(), parent, verdict, system)
	}
	// Output:
	// txlock.attempt (parent txlock.Run) verdict=committed db.system.name=sqlite
	// txlock.Run (parent POST /names) verdict=committed db.system.name=sqlite
	// POST /names (parent -) verdict= db.system.name=
}
