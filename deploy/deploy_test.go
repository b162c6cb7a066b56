// Package deploy holds the Kubernetes manifests and the Grafana dashboard;
// its tests validate them offline.
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/controller"
	"github.com/premirror/premirror/internal/promdesc"
)

func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// manifests are the documents of every shipped manifest.
func manifests(t *testing.T) [][]byte {
	var docs [][]byte
	for _, f := range []string{"kubernetes/edge-agent.yaml", "kubernetes/controller.yaml"} {
		docs = append(docs, documents(t, f)...)
	}
	return docs
}

// kind is a manifest document's kind.
func kind(t *testing.T, doc []byte) string {
	t.Helper()
	var meta struct{ Kind string }
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatal(err)
	}
	return meta.Kind
}

// shippedAgentConfig is the agent config the manifests ship: the
// edge-agent.yaml of their ConfigMap, decoded strictly.
func shippedAgentConfig(t *testing.T) string {
	t.Helper()
	for _, doc := range manifests(t) {
		if kind(t, doc) != "ConfigMap" {
			continue
		}
		var o corev1.ConfigMap
		if err := yaml.UnmarshalStrict(doc, &o); err != nil {
			t.Fatal(err)
		}
		if c, ok := o.Data["edge-agent.yaml"]; ok {
			return c
		}
	}
	t.Fatal("no ConfigMap in the manifests holds edge-agent.yaml")
	return ""
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestManifestsStrict decodes every manifest strictly into the k8s.io/api
// type of its kind (unknown fields are errors), checks the DaemonSet's
// security posture, and parses the agent config it ships.
func TestManifestsStrict(t *testing.T) {
	for _, doc := range manifests(t) {
		k := kind(t, doc)
		var obj any
		switch k {
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "Service":
			obj = &corev1.Service{}
		case "StatefulSet":
			obj = &appsv1.StatefulSet{}
		default:
			t.Fatalf("unexpected kind %q", k)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			if _, err := agent.ParseConfig([]byte(o.Data["edge-agent.yaml"])); err != nil {
				t.Fatalf("shipped agent config: %v", err)
			}
		case *appsv1.DaemonSet:
			spec := o.Spec.Template.Spec
			if !spec.HostNetwork {
				t.Error("the agent must run in the host network namespace")
			}
			c := spec.Containers[0]
			sc := c.SecurityContext
			if sc == nil || sc.Privileged != nil && *sc.Privileged {
				t.Fatal("the agent container must not be privileged")
			}
			if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("capabilities drop %v, want ALL", sc.Capabilities.Drop)
			}
			// SYS_ADMIN: every restart opens the pinned route tables by
			// ID (cmd/edge-agent TestRestartUnderManifestCapabilities
			// runs the agent under exactly this set).
			if !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}) {
				t.Errorf("capabilities add %v, want BPF NET_ADMIN PERFMON SYS_ADMIN", sc.Capabilities.Add)
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Host != "127.0.0.1" || c.LivenessProbe.HTTPGet.Path != "/livez" {
				t.Error("liveness must probe /livez on 127.0.0.1 (a refused reload fails /healthz, and a restart cannot fix it)")
			}
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" {
				t.Error("readiness must probe /healthz")
			}
		case *appsv1.StatefulSet:
			spec := o.Spec.Template.Spec
			c := spec.Containers[0]
			if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
				t.Error("the controller must run as a non-root user")
			}
			sc := c.SecurityContext
			if sc == nil || sc.Privileged != nil && *sc.Privileged || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
				t.Error("the controller container needs no capability, no privilege and no writable root")
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe == nil {
				t.Error("liveness and readiness must probe /healthz")
			}
			if len(o.Spec.VolumeClaimTemplates) != 1 || !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == o.Spec.VolumeClaimTemplates[0].Name
			}) {
				t.Error("the embedded etcd's data directory must be on the persistent volume")
			}
			if len(c.Args) == 0 || c.Args[0] != "run" {
				t.Errorf("controller args %v: want the run subcommand (cmd/controller checks its flags)", c.Args)
			}
		}
	}
}

// TestControllerExampleWorkable uncomments the agent's controller:
// section and the DaemonSet's volumes for it, and checks that they can
// work on every node from one ConfigMap: the TLS files have fixed names
// (the config has no per-node substitution: "<node>.pem" named a file
// no node has), they come from a per-node hostPath (the node's own
// certificate, not a Secret shared by all), and the state cache is on a
// writable hostPath (the root filesystem is read-only).
func TestControllerExampleWorkable(t *testing.T) {
	cfgText := shippedAgentConfig(t)
	var ds *appsv1.DaemonSet
	for _, doc := range documents(t, "kubernetes/edge-agent.yaml") {
		if kind(t, doc) != "DaemonSet" {
			continue
		}
		// The commented volume mounts and volumes, uncommented.
		on := regexp.MustCompile(`(?m)^(\s+)# (- \{name: |- name: |  hostPath: )`).ReplaceAll(doc, []byte("$1$2"))
		ds = &appsv1.DaemonSet{}
		if err := yaml.UnmarshalStrict(on, ds); err != nil {
			t.Fatalf("DaemonSet with its commented volumes: %v", err)
		}
	}
	// The controller: block: "# controller:" and the "#   " lines after it.
	var block []string
	lines := strings.Split(cfgText, "\n")
	for i, l := range lines {
		if l != "# controller:" {
			continue
		}
		block = append(block, "controller:")
		for _, m := range lines[i+1:] {
			rest, ok := strings.CutPrefix(m, "#   ")
			if !ok {
				break
			}
			block = append(block, "  "+rest)
		}
	}
	if len(block) < 2 {
		t.Fatal("no commented controller: section in the agent config")
	}
	cfg, err := agent.ParseConfig([]byte(cfgText + "\n" + strings.Join(block, "\n") + "\n"))
	if err != nil {
		t.Fatalf("the agent config with its controller: section: %v", err)
	}
	c := cfg.Controller
	spec := ds.Spec.Template.Spec
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	// mountOf is the container's mount holding path (the deepest).
	mountOf := func(path string) (corev1.VolumeMount, bool) {
		var best corev1.VolumeMount
		for _, m := range spec.Containers[0].VolumeMounts {
			if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") && len(m.MountPath) > len(best.MountPath) {
				best = m
			}
		}
		return best, best.Name != ""
	}
	for field, path := range map[string]string{"ca": c.TLS.CA, "cert": c.TLS.Cert, "key": c.TLS.Key} {
		if strings.ContainsAny(path, "<>$") {
			t.Errorf("controller.tls.%s %q: a placeholder; one ConfigMap serves every node, so the name must be fixed", field, path)
		}
		m, ok := mountOf(path)
		if !ok || volumes[m.Name].HostPath == nil {
			t.Errorf("controller.tls.%s %s: not on a hostPath volume mount (each node provides its own certificate)", field, path)
		}
	}
	if m, ok := mountOf(c.StateCache); !ok || m.ReadOnly || volumes[m.Name].HostPath == nil {
		t.Errorf("controller.state_cache %s: not on a writable hostPath volume mount (the root filesystem is read-only, and the cache must outlive the pod)", c.StateCache)
	}
}

// TestMetricsScrapedAndProbed: every workload serves /metrics on the port
// its configuration sets (the agent's metrics_addr, the controller's
// --metrics-addr), carries the prometheus.io annotations that point
// annotation-based pod scraping there (no alert rule names a job: an
// unscraped controller leaves PremirrorControllerNoLeader silent), and
// probes health on that same port.
func TestMetricsScrapedAndProbed(t *testing.T) {
	agentCfg := shippedAgentConfig(t)
	type workload struct {
		kind string
		tmpl corev1.PodTemplateSpec
	}
	var workloads []workload
	for _, doc := range manifests(t) {
		switch k := kind(t, doc); k {
		case "DaemonSet":
			var o appsv1.DaemonSet
			if err := yaml.Unmarshal(doc, &o); err != nil {
				t.Fatal(err)
			}
			workloads = append(workloads, workload{k, o.Spec.Template})
		case "StatefulSet":
			var o appsv1.StatefulSet
			if err := yaml.Unmarshal(doc, &o); err != nil {
				t.Fatal(err)
			}
			workloads = append(workloads, workload{k, o.Spec.Template})
		}
	}
	if len(workloads) != 2 {
		t.Fatalf("%d workloads, want the agent's DaemonSet and the controller's StatefulSet", len(workloads))
	}
	for _, w := range workloads {
		c := w.tmpl.Spec.Containers[0]
		var addr string
		switch w.kind {
		case "DaemonSet":
			cfg, err := agent.ParseConfig([]byte(agentCfg))
			if err != nil {
				t.Fatal(err)
			}
			addr = cfg.MetricsAddr
		case "StatefulSet":
			addr = "127.0.0.1:9451" // cmd/controller run's default
			for _, a := range c.Args {
				if v, ok := strings.CutPrefix(a, "--metrics-addr="); ok {
					addr = v
				}
			}
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%s: metrics address %q: %v", w.kind, addr, err)
		}
		// A probe's port is a number or the name of one of the container's.
		portOf := func(p *corev1.HTTPGetAction) string {
			for _, cp := range c.Ports {
				if cp.Name != "" && cp.Name == p.Port.StrVal {
					return fmt.Sprint(cp.ContainerPort)
				}
			}
			return p.Port.String()
		}
		if a := w.tmpl.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != port {
			t.Errorf("%s: pod annotations %v: want prometheus.io/scrape \"true\" and prometheus.io/port %q (its metrics address is %s)",
				w.kind, a, port, addr)
		}
		for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s: no %s HTTP probe", w.kind, name)
				continue
			}
			if got := portOf(p.HTTPGet); got != port {
				t.Errorf("%s: %s probe on port %s, but metrics and health listen on %s", w.kind, name, got, addr)
			}
		}
	}
}

// TestImagesBuiltByDockerfile: every image a manifest runs is a target of
// the repository's Dockerfile that builds the matching command.
func TestImagesBuiltByDockerfile(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	images := regexp.MustCompile(`image:\s*ghcr\.io/premirror/([a-z-]+):`)
	for _, f := range []string{"kubernetes/edge-agent.yaml", "kubernetes/controller.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ms := images.FindAllStringSubmatch(string(b), -1)
		if len(ms) == 0 {
			t.Fatalf("%s runs no premirror image", f)
		}
		for _, m := range ms {
			target := m[1]
			if !regexp.MustCompile(`(?m)^FROM \S+ AS ` + target + `$`).Match(df) {
				t.Errorf("%s runs %s, which the Dockerfile has no target for", f, target)
			}
			if !strings.Contains(string(df), "./cmd/"+target) {
				t.Errorf("the Dockerfile does not build ./cmd/%s", target)
			}
			if _, err := os.Stat("../cmd/" + target); err != nil {
				t.Errorf("image %s: %v", target, err)
			}
		}
	}
}

// TestManifestsSchema validates the manifests against the Kubernetes
// OpenAPI definitions shipped in ../shared/k8s-schema (skipped when that
// directory is not beside the repository).
func TestManifestsSchema(t *testing.T) {
	defs, err := filepath.Abs("../../shared/k8s-schema/_definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(defs); err != nil {
		t.Skipf("no Kubernetes schema at %s: %v", defs, err)
	}
	byKind := map[string]string{
		"Namespace": "io.k8s.api.core.v1.Namespace", "ServiceAccount": "io.k8s.api.core.v1.ServiceAccount",
		"ConfigMap": "io.k8s.api.core.v1.ConfigMap", "DaemonSet": "io.k8s.api.apps.v1.DaemonSet",
		"Service": "io.k8s.api.core.v1.Service", "StatefulSet": "io.k8s.api.apps.v1.StatefulSet",
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft4)
	for _, doc := range manifests(t) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct{ Kind string }
		_ = json.Unmarshal(j, &meta)
		sch, err := c.Compile("file://" + defs + "#/definitions/" + byKind[meta.Kind])
		if err != nil {
			t.Fatalf("compile schema for %s: %v", meta.Kind, err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s: %v", meta.Kind, err)
		}
	}
}

// TestDashboardQueries: every metric the dashboards query is one the agent
// (edge dashboard) or the controller (controller dashboard) exports, with
// the labels the queries select and group by.
func TestDashboardQueries(t *testing.T) {
	for _, tc := range []struct {
		file    string
		metrics []promdesc.Metric
	}{
		{"grafana/premirror-edge.json", agent.Metrics()},
		{"grafana/premirror-controller.json", controller.Metrics()},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) { checkDashboard(t, tc.file, exported(tc.metrics...)) })
	}
}

func checkDashboard(t *testing.T, file string, have map[string][]string) {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	if err := json.NewDecoder(f).Decode(&d); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			checkSelectors(t, p.Title, tg.Expr, have)
			n++
		}
	}
	for _, v := range d.Templating.List {
		if s, ok := v.Query.(string); ok {
			checkSelectors(t, "variable", s, have)
			n++
		}
	}
	if n < 5 {
		t.Fatalf("only %d queries found", n)
	}
}

// TestStatefulSetGovernedByHeadlessService: a StatefulSet's serviceName
// must name a headless Service of the manifests (clusterIP None), the
// one that gives each replica a stable DNS name; the controller's named
// its ClusterIP Service, which gives none.
func TestStatefulSetGovernedByHeadlessService(t *testing.T) {
	services := map[string]corev1.Service{}
	var sets []appsv1.StatefulSet
	for _, doc := range manifests(t) {
		switch kind(t, doc) {
		case "Service":
			var s corev1.Service
			if err := yaml.Unmarshal(doc, &s); err != nil {
				t.Fatal(err)
			}
			services[s.Namespace+"/"+s.Name] = s
		case "StatefulSet":
			var s appsv1.StatefulSet
			if err := yaml.Unmarshal(doc, &s); err != nil {
				t.Fatal(err)
			}
			sets = append(sets, s)
		}
	}
	if len(sets) == 0 {
		t.Fatal("no StatefulSet in the manifests")
	}
	for _, s := range sets {
		svc, ok := services[s.Namespace+"/"+s.Spec.ServiceName]
		switch {
		case !ok:
			t.Errorf("StatefulSet %s: serviceName %q is no Service of the manifests", s.Name, s.Spec.ServiceName)
		case svc.Spec.ClusterIP != corev1.ClusterIPNone:
			t.Errorf("StatefulSet %s: serviceName %q is not headless (clusterIP %q)", s.Name, s.Spec.ServiceName, svc.Spec.ClusterIP)
		}
	}
}
