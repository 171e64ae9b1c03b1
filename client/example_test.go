package client_test

import (
	"context"
	"log"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
)

func Example() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	cfg := client.Config{
		Logger:        slog.Default(),
		WaitBootstrap: true,
		OnChange: func(old, new *cache.Snapshot, changed []string) {
			slog.Info("registry changed", "revision", new.Revision(), "changed", len(changed))
		},
	}
	c, err := client.New(nc, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	defer c.Stop()
	metrics := prometheus.NewRegistry() // served on /metrics by the router
	metrics.MustRegister(c.Collector())

	// On the request path: lock-free, allocation-free.
	if ext, ok := c.Lookup("normalize_text"); ok {
		choice := ext.SelectVersion(map[string]string{"tenant_id": "t1"})
		_ = choice.Subject // invoke it with choice.TimeoutMS and choice.Retry
	}
	for _, ext := range c.ByType(cache.TypePre) {
		_ = ext.Subject
	}
}
