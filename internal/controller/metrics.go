package controller

import (
	"github.com/premirror/premirror/internal/pki"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/premirror/premirror/internal/forecast"
	"github.com/premirror/premirror/internal/promdesc"
	"github.com/premirror/premirror/internal/route"
)

type metrics struct {
	leader     prometheus.Gauge
	version    prometheus.GaugeFunc
	agents     prometheus.GaugeFunc
	ticks      *prometheus.CounterVec
	tickTime   prometheus.Histogram
	versions   prometheus.Counter
	acks       *prometheus.CounterVec
	reports    prometheus.Counter
	throttled  prometheus.Counter
	movedSlots prometheus.Counter

	accessFlows       *prometheus.CounterVec
	aggregateWrites   prometheus.Counter
	aggregatesLate    prometheus.Counter
	accessFenced      prometheus.Counter
	accessBaselines   *prometheus.CounterVec
	fcPass            prometheus.Histogram
	fcCheckpoints     *prometheus.CounterVec
	fcCheckpointBytes prometheus.Gauge
	fcCheckpointTime  prometheus.Histogram
	fcRestores        *prometheus.CounterVec
	fcFeeds           *prometheus.CounterVec

	placementEvals     *prometheus.CounterVec
	placementDecisions *prometheus.CounterVec
	placedCopies       *prometheus.GaugeVec
	regionRTT          *prometheus.GaugeVec
	regionBestRTT      *prometheus.GaugeVec
}

func newMetrics(c *Controller) *metrics {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_controller_leader",
			Help: "1 while this replica leads (computes routes and writes desired state)."}),
		version: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "premirror_controller_desired_version",
			Help: "Current desired-state version as this replica sees it."}, func() float64 {
			return float64(c.view.desiredRecord().GetState().GetVersion())
		}),
		agents: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "premirror_controller_agent_sessions",
			Help: "Agent sessions open on this replica."}, func() float64 { return float64(c.sessionCount()) }),
		ticks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_route_ticks_total",
			Help: "Route computations by this replica as leader, by result (ok, error)."}, []string{"result"}),
		tickTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "premirror_controller_route_tick_duration_seconds",
			Help:    "Duration of one route computation, from snapshot to desired state written.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		versions: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_versions_total",
			Help: "Desired-state versions written by this replica."}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_agent_acks_total",
			Help: "Versions agents confirmed on this replica, by result (ack, nack)."}, []string{"result"}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_agent_reports_total",
			Help: "Agent reports received by this replica."}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_agent_messages_throttled_total",
			Help: "Agent messages that waited because their session sent more than 10 per report interval."}),
		movedSlots: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_route_moved_slots_total",
			Help: "Route-table slots moved by the versions this replica wrote."}),
		accessFlows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_access_flows_total",
			Help: "New flows of agents' access counts on their way to the forecaster, by outcome: received (by this replica), " +
				"late_at_replica (for a bucket already written for the last time), duplicate (in a report the agent sent again " +
				"that a session of its run had already counted: skipped), implausible (counts, not flows: more new flows " +
				"than a link can carry in the report's span, a broken counter), write_failed (lost with a failed aggregate write), ingested, late, rejected, " +
				"unknown_resource, unknown_region (by the leader)."}, []string{"outcome"}),
		aggregateWrites: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_access_aggregate_writes_total",
			Help: "Per-bucket access aggregates this replica wrote to etcd."}),
		aggregatesLate: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_access_aggregates_late_total",
			Help: "Access aggregates the leader found rewritten after it had closed their bucket (what they added since is lost)."}),
		accessFenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "premirror_controller_access_flushes_fenced_total",
			Help: "Writes of a session's access aggregates this replica refused because a newer session of the same agent run " +
				"took its counts over (the agent sends the reports not written again, to the newer session)."}),
		accessBaselines: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_access_baselines_total",
			Help: "Registrations of agent runs restored from an access journal that asked whether their counter baseline " +
				"still holds, by verdict: kept, or stale (another agent ran on the node since the run's last write; the agent " +
				"counts from its counters' values at its start)."}, []string{"verdict"}),
		fcPass: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "premirror_controller_forecast_ingest_duration_seconds",
			Help:    "Time the leader took to read, ingest and close the buckets that were due.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		fcCheckpoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_forecast_checkpoints_total",
			Help: "Forecast checkpoints by result (etcd, file, too_large, error, file_error)."}, []string{"result"}),
		fcCheckpointBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "premirror_controller_forecast_checkpoint_size_bytes",
			Help: "Size of the last forecast checkpoint (deflated)."}),
		fcCheckpointTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "premirror_controller_forecast_checkpoint_duration_seconds",
			Help:    "Time to encode and write one forecast checkpoint to etcd.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		fcRestores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_forecast_restores_total",
			Help: "Forecast state restored on becoming leader, by source (etcd, file, none, discarded)."}, []string{"source"}),
		fcFeeds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_forecast_feeds_total",
			Help: "External feeds by kind (events, covariates) and result (stored, rejected by this replica; applied, failed by the leader)."},
			[]string{"kind", "result"}),
		placementEvals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_placement_evaluations_total",
			Help: "Mirroring-manager evaluations of one resource by the leader, by result (ok, error)."}, []string{"result"}),
		placementDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "premirror_controller_placement_decisions_total",
			Help: "Copies the mirroring manager placed or retired, by action (place, retire)."}, []string{"action"}),
		placedCopies: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "premirror_controller_placed_copies",
			Help: "Copies the mirroring manager holds placed, over every resource, at its last evaluation, by what their hosts " +
				"report (unreported, copying, in_sync: only in_sync copies are routed to)."}, []string{"state"}),
		regionRTT: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "premirror_controller_region_rtt_seconds",
			Help: "Path RTT each client region's traffic goes over at the leader's last route computation: per route the " +
				"slot-weighted RTT of the paths to its table's mirrors, averaged over the region's routes weighted by their demand " +
				"from the region (each route once while no demand is known) (the leader only)."}, []string{"region"}),
		regionBestRTT: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "premirror_controller_region_best_rtt_seconds",
			Help: "For the same routes, the lowest path RTT among each resource's routable copies, averaged: " +
				"premirror_controller_region_rtt_seconds above it is what damping, capacity and the other cost terms cost in latency (the leader only)."}, []string{"region"}),
	}
	// Every result the alerts' increase() and rate() select exists from
	// the start: a series created by its first event starts at 1, and
	// increase() over it sees nothing, so a single NACK or failure would
	// raise no alert.
	for _, r := range []string{"ok", "error"} {
		m.ticks.WithLabelValues(r)
	}
	for _, r := range []string{"ack", "nack"} {
		m.acks.WithLabelValues(r)
	}
	for _, r := range []string{"etcd", "file", "too_large", "error", "file_error"} {
		m.fcCheckpoints.WithLabelValues(r)
	}
	for _, v := range []string{"kept", "stale"} {
		m.accessBaselines.WithLabelValues(v)
	}
	for _, o := range []string{"received", "late_at_replica", "duplicate", "implausible", "write_failed", "ingested", "late", "rejected", "unknown_resource", "unknown_region"} {
		m.accessFlows.WithLabelValues(o)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.leader, m.version, m.agents, m.ticks, m.tickTime, m.versions, m.acks, m.reports, m.throttled, m.movedSlots,
		m.accessFlows, m.aggregateWrites, m.aggregatesLate, m.accessFenced, m.accessBaselines, m.fcPass, m.fcCheckpoints, m.fcCheckpointBytes, m.fcCheckpointTime, m.fcRestores, m.fcFeeds,
		m.placementEvals, m.placementDecisions, m.placedCopies, m.regionRTT, m.regionBestRTT}
}

// Metrics lists every metric a controller exports (its own, the routing
// policy's and the prediction engine's) with its labels; the deploy tests
// keep the dashboards' queries and the alert rules in sync with it.
func Metrics() []promdesc.Metric {
	var rec promdesc.Recorder
	rec.MustRegister(newMetrics(&Controller{}).collectors()...)
	rec.MustRegister(route.NewMetrics())
	rec.MustRegister(new(pki.Source).Collector("agents"))
	if _, err := forecast.NewEngine(forecast.EngineConfig{Registerer: &rec}); err != nil {
		panic(err)
	}
	return rec.Metrics()
}

// MetricNames lists the names of Metrics.
func MetricNames() []string { return promdesc.Names(Metrics()) }
