package control

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descConnected = prometheus.NewDesc("premirror_control_connected",
		"1 while a session with a controller is open.", nil, nil)
	descApplied = prometheus.NewDesc("premirror_control_applied_version",
		"Desired-state version the data plane runs (0: none).", nil, nil)
	descVersions = prometheus.NewDesc("premirror_control_versions_total",
		"Desired-state versions received, by outcome (ack, nack).", []string{"result"}, nil)
	descReports = prometheus.NewDesc("premirror_control_reports_total",
		"Reports sent to the controller.", nil, nil)
	descReconnects = prometheus.NewDesc("premirror_control_reconnects_total",
		"Sessions that ended and were retried.", nil, nil)
	descResent = prometheus.NewDesc("premirror_control_reports_resent_total",
		"Reports sent again on a new session because no controller had confirmed their access counts.", nil, nil)
	descPending = prometheus.NewDesc("premirror_control_pending_reports",
		"Reports whose access counts the controller has not yet confirmed written; they are sent again after a reconnect.", nil, nil)
	descPendingDropped = prometheus.NewDesc("premirror_control_pending_reports_dropped_total",
		"Reports dropped before the controller confirmed their access counts, by reason: limit (more pending than "+
			"the bound; lost unless a controller wrote them), not_confirming (the new session's controller confirms none, "+
			"an older one: not sent again, as before confirmations).", []string{"reason"}, nil)
	descJournalLoads = prometheus.NewDesc("premirror_control_journal_loads_total",
		"Access journal read at start, by outcome: fresh (none: a new run), restored (the previous process's run "+
			"continued), corrupt, incompatible (another build's format), unreadable (a new run; the file is kept as .corrupt), "+
			"locked (another process holds it: this one runs without).", []string{"outcome"}, nil)
	descJournalBaselines = prometheus.NewDesc("premirror_control_journal_baselines_total",
		"Counter baselines restored from the access journal, by the controller's word at the first registration: kept "+
			"(no other agent ran on the node since the journal's last write), stale (another did and reported the counters "+
			"since: dropped, counting from their values at start), unchecked (an older controller: kept, as before).",
		[]string{"outcome"}, nil)
	descJournalWrites = prometheus.NewDesc("premirror_control_journal_writes_total",
		"Access journal writes, by kind: snapshot (the whole journal, atomically), append (one report).", []string{"kind"}, nil)
	descJournalErrors = prometheus.NewDesc("premirror_control_journal_write_errors_total",
		"Access journal writes or removals that failed; a restart before the next successful write starts a new run.", nil, nil)
	descJournalBytes = prometheus.NewDesc("premirror_control_journal_written_bytes_total",
		"Bytes written to the access journal.", nil, nil)
	descJournalSeconds = prometheus.NewDesc("premirror_control_journal_write_seconds_total",
		"Time spent writing and syncing the access journal (before the reports are sent).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Client) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descApplied, descVersions, descReports, descReconnects, descResent, descPending, descPendingDropped,
		descJournalLoads, descJournalBaselines, descJournalWrites, descJournalErrors, descJournalBytes, descJournalSeconds} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; register the Client in the
// agent's registry.
func (c *Client) Collect(ch chan<- prometheus.Metric) {
	conn := 0.0
	if c.m.connected.Load() {
		conn = 1
	}
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, conn)
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(c.m.applied.Load()))
	ch <- prometheus.MustNewConstMetric(descVersions, prometheus.CounterValue, float64(c.m.acks.Load()), "ack")
	ch <- prometheus.MustNewConstMetric(descVersions, prometheus.CounterValue, float64(c.m.nacks.Load()), "nack")
	ch <- prometheus.MustNewConstMetric(descReports, prometheus.CounterValue, float64(c.m.reports.Load()))
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(c.m.reconnects.Load()))
	ch <- prometheus.MustNewConstMetric(descResent, prometheus.CounterValue, float64(c.m.resent.Load()))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(c.m.pending.Load()))
	ch <- prometheus.MustNewConstMetric(descPendingDropped, prometheus.CounterValue, float64(c.m.droppedLimit.Load()), "limit")
	ch <- prometheus.MustNewConstMetric(descPendingDropped, prometheus.CounterValue, float64(c.m.droppedUnconfirmed.Load()), "not_confirming")
	if c.cfg.JournalFile == "" {
		return
	}
	for _, o := range journalOutcomes {
		n := 0.0
		if c.m.journalLoad == o {
			n = 1
		}
		ch <- prometheus.MustNewConstMetric(descJournalLoads, prometheus.CounterValue, n, o)
	}
	for i, o := range baselineOutcomes {
		ch <- prometheus.MustNewConstMetric(descJournalBaselines, prometheus.CounterValue, float64(c.m.baselines[i].Load()), o)
	}
	ch <- prometheus.MustNewConstMetric(descJournalWrites, prometheus.CounterValue, float64(c.m.journalSnapshots.Load()), "snapshot")
	ch <- prometheus.MustNewConstMetric(descJournalWrites, prometheus.CounterValue, float64(c.m.journalAppends.Load()), "append")
	ch <- prometheus.MustNewConstMetric(descJournalErrors, prometheus.CounterValue, float64(c.m.journalErrors.Load()))
	ch <- prometheus.MustNewConstMetric(descJournalBytes, prometheus.CounterValue, float64(c.m.journalBytes.Load()))
	ch <- prometheus.MustNewConstMetric(descJournalSeconds, prometheus.CounterValue, time.Duration(c.m.journalNanos.Load()).Seconds())
}
