package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/premirror/premirror/api/premirror/v1"
	"github.com/premirror/premirror/internal/agent"
	"github.com/premirror/premirror/internal/testbed"
)

// ControllerSetup runs the real controller in one testbed host (its eth0
// IPv4 address is the agents' endpoint) and puts every agent under it.
type ControllerSetup struct {
	Bin  string   // controller binary
	Host string   // testbed host that runs it
	Args []string // extra `controller run` flags (tick, route knobs…)
	// Objects is the YAML applied once the controller is up.
	Objects string
	// Sites maps agent host → Site object name.
	Sites map[string]string
	// ProbeInterval of the edges' probes; 0 keeps the agent's default.
	ProbeInterval time.Duration
	// ReportInterval of the agents; 0 keeps the default.
	ReportInterval time.Duration
	// ServiceCheckInterval of the mirror hosts' service checks (timeout
	// half of it); 0 keeps the default.
	ServiceCheckInterval time.Duration
	// ServiceCheckUDP, when set, also checks the mirror hosts' UDP VIPs
	// on its ports (service_check.udp).
	ServiceCheckUDP *agent.UDPCheckCfg
	// Replicators are the hosts that get a replicator certificate from the
	// lab's CA (see Lab.Replication): the agents' certificates carry no
	// names to verify a replication listener by.
	Replicators []string
}

// ControllerPort is where the lab controller serves agents and admins.
const ControllerPort = 7443

const controllerMetrics = "127.0.0.1:9451"

type ctlState struct {
	setup   ControllerSetup
	certs   string
	addr    string
	dataDir string
	log     string
	certArg []string // the `controller certs` command that made certs
	cmd     *exec.Cmd
	done    chan error
}

// BuildController compiles cmd/controller into dir.
func BuildController(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "controller")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/controller")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build controller: %v\n%s", err, out)
	}
	return bin, nil
}

// StartController makes certificates, starts the controller, waits until
// it leads and applies the objects. Agents started afterwards connect to
// it; call it before StartAll.
func (l *Lab) StartController(ctx context.Context, s ControllerSetup) error {
	h := l.TB.Host(s.Host)
	if h == nil {
		return fmt.Errorf("no host %q", s.Host)
	}
	c := &ctlState{setup: s, certs: filepath.Join(l.dir, "certs"), dataDir: filepath.Join(l.dir, "etcd"),
		log: filepath.Join(l.dir, "controller.log"), addr: net.JoinHostPort(h.V4().String(), fmt.Sprint(ControllerPort))}
	var agents []string
	for _, hh := range l.TB.Hosts() {
		agents = append(agents, hh.Name)
	}
	certArgs := []string{"certs", "--dir", c.certs, "--hosts", h.V4().String() + ",127.0.0.1", "--agents", strings.Join(agents, ",")}
	if len(s.Replicators) > 0 {
		certArgs = append(certArgs, "--replicators", strings.Join(s.Replicators, ","))
	}
	out, err := exec.CommandContext(ctx, s.Bin, certArgs...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("controller certs: %v\n%s", err, out)
	}
	c.certArg = certArgs
	l.mu.Lock()
	l.ctl = c
	l.mu.Unlock()
	if err := l.startController(ctx); err != nil {
		return err
	}
	if s.Objects != "" {
		if err := l.Apply(ctx, s.Objects); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startController(ctx context.Context) error {
	c := l.ctl
	h := l.TB.Host(c.setup.Host)
	args := append([]string{"run", "--tls-dir", c.certs, "--data-dir", c.dataDir,
		"--listen", c.addr, "--metrics-addr", controllerMetrics, "--name", "lab-" + c.setup.Host}, c.setup.Args...)
	logf, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.cmd = h.Command(c.setup.Bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start controller: %w", err)
	}
	c.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait(); logf.Close() }(c.cmd, c.done)

	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	hc := l.httpClient(h)
	var last string
	for {
		select {
		case err := <-c.done:
			return fmt.Errorf("controller exited (%v):\n%s", err, tail(c.log))
		case <-ctx.Done():
			return fmt.Errorf("controller not healthy (%s):\n%s", last, tail(c.log))
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := hc.Get("http://" + controllerMetrics + "/healthz")
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = string(b)
		if resp.StatusCode == 200 && strings.Contains(last, "leader") && !strings.Contains(last, `leader ""`) {
			return nil
		}
	}
}

// StopController kills the controller (SIGKILL: as if its host died).
func (l *Lab) StopController() error {
	c := l.ctl
	if c == nil || c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	c.cmd = nil
	return nil
}

// RestartController starts a stopped controller again on the same data.
func (l *Lab) RestartController(ctx context.Context) error {
	if l.ctl == nil {
		return errors.New("no controller")
	}
	return l.startController(ctx)
}

// RenewCerts issues every certificate of the lab again from its CA (new
// keys and serials over the same files), as a renewal by cert-manager
// would; running processes take them at their next handshake.
func (l *Lab) RenewCerts(ctx context.Context) error {
	c := l.ctl
	if c == nil {
		return errors.New("no controller")
	}
	if out, err := exec.CommandContext(ctx, c.setup.Bin, c.certArg...).CombinedOutput(); err != nil {
		return fmt.Errorf("controller certs: %v\n%s", err, out)
	}
	return nil
}

// ControllerCommand runs a controller client subcommand (status,
// placements, forecast show…) as the admin, in the controller's host, and
// returns its combined output.
func (l *Lab) ControllerCommand(ctx context.Context, args ...string) ([]byte, error) {
	return l.ctlCommand(ctx, args...)
}

// ctl runs a controller client subcommand as the admin, in the
// controller's host.
func (l *Lab) ctlCommand(ctx context.Context, args ...string) ([]byte, error) {
	c := l.ctl
	if c == nil {
		return nil, errors.New("no controller")
	}
	h := l.TB.Host(c.setup.Host)
	full := append(args, "--server", c.addr, "--tls-dir", c.certs)
	return h.Run(ctx, c.setup.Bin, full...)
}

// Apply applies YAML objects through `controller apply`.
func (l *Lab) Apply(ctx context.Context, objects string) error {
	f := filepath.Join(l.dir, fmt.Sprintf("objects-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(objects), 0o644); err != nil {
		return err
	}
	out, err := l.ctlCommand(ctx, "apply", "-f", f)
	if err != nil {
		return fmt.Errorf("controller apply: %v\n%s", err, out)
	}
	return nil
}

// ControllerStatus returns `controller status` output.
func (l *Lab) ControllerStatus(ctx context.Context) (string, error) {
	out, err := l.ctlCommand(ctx, "status")
	return string(out), err
}

// Placements returns the mirroring manager's record of resource
// (`controller placements <resource> -o json`); a resource not evaluated
// yet has an empty record.
func (l *Lab) Placements(ctx context.Context, resource string) (*pb.PlacementRecord, error) {
	out, err := l.ctlCommand(ctx, "placements", resource, "-o", "json")
	if err != nil {
		return nil, err
	}
	var resp pb.PlacementsResponse
	if err := protojson.Unmarshal(out, &resp); err != nil {
		return nil, fmt.Errorf("placements %s: %w", resource, err)
	}
	for _, rec := range resp.GetRecords() {
		if rec.GetResource() == resource {
			return rec, nil
		}
	}
	return &pb.PlacementRecord{Resource: resource}, nil
}

// ControllerLog returns the tail of the controller's log.
func (l *Lab) ControllerLog() string {
	if l.ctl == nil {
		return ""
	}
	return tail(l.ctl.log)
}

// controllerConfig is the agent config section for host under the lab
// controller, or nil.
func (l *Lab) controllerConfig(host string) (*agent.ControllerCfg, agent.ProbeCfg, agent.ServiceCheckCfg) {
	c := l.ctl
	if c == nil {
		return nil, agent.ProbeCfg{}, agent.ServiceCheckCfg{}
	}
	sc := agent.ServiceCheckCfg{Interval: agent.Duration(c.setup.ServiceCheckInterval), Timeout: agent.Duration(c.setup.ServiceCheckInterval / 2),
		UDP: c.setup.ServiceCheckUDP}
	return &agent.ControllerCfg{
			Endpoints: []string{c.addr},
			Site:      c.setup.Sites[host],
			TLS:       agent.TLSFiles{CA: filepath.Join(c.certs, "ca.pem"), Cert: filepath.Join(c.certs, host+".pem"), Key: filepath.Join(c.certs, host+"-key.pem")},
			// `controller certs` names the controller's certificate so:
			// no agent's certificate is taken for it.
			ServerNames:    []string{"controller"},
			StateCache:     filepath.Join(l.dir, host+".state.pb"),
			ReportInterval: agent.Duration(c.setup.ReportInterval),
			// Every namespace shares this machine's CPUs: its load says
			// nothing about one mirror.
			Utilization: "none",
		}, agent.ProbeCfg{
			Interval: agent.Duration(c.setup.ProbeInterval),
		}, sc
}

// ReplicationPort is where lab replicators listen, on their host's eth0
// IPv4 address.
const ReplicationPort = 7400

// Replication returns a replication section for host's agent: its
// replicator certificate (ControllerSetup.Replicators must list it), a
// listener at ReplicationPort and a volume API socket in the lab's
// directory (the default path is shared by every namespace of this
// machine). The caller adds volumes and peers.
func (l *Lab) Replication(host string) (*agent.Replication, error) {
	h := l.TB.Host(host)
	if h == nil {
		return nil, fmt.Errorf("no host %q", host)
	}
	if l.ctl == nil || !slices.Contains(l.ctl.setup.Replicators, host) {
		return nil, fmt.Errorf("host %s has no replicator certificate (ControllerSetup.Replicators)", host)
	}
	certs := l.ctl.certs
	return &agent.Replication{
		Listen: net.JoinHostPort(h.V4().String(), fmt.Sprint(ReplicationPort)),
		TLS: agent.TLSFiles{CA: filepath.Join(certs, "ca.pem"), Cert: filepath.Join(certs, "replicator-"+host+".pem"),
			Key: filepath.Join(certs, "replicator-"+host+"-key.pem")},
		WriteSocket: filepath.Join(l.dir, host+".volumes.sock"),
	}, nil
}

// ReplicationPeer is the peer entry that reaches host's replicator (its
// certificate names the host, not its address).
func (l *Lab) ReplicationPeer(host string) agent.PeerCfg {
	return agent.PeerCfg{Name: host, Addr: net.JoinHostPort(l.TB.Host(host).V4().String(), fmt.Sprint(ReplicationPort)),
		ServerName: host}
}

// VolumeCopy describes a volume the mirroring manager may copy: its
// primary on one host, an empty mirror that only the primary may fill on
// another (a placed copy of the resource named like the volume).
type VolumeCopy struct {
	Volume               string
	PrimaryHost, Primary string // host and image path of the primary
	MirrorHost, Mirror   string // host and image path of the mirror
	// MirrorDir, when set, replaces Mirror: the mirror host declares no
	// volume and creates <MirrorDir>/<Volume>.img when the placement's
	// task arrives (agent replication.volume_dir).
	MirrorDir    string
	Schedule     string // the primary's rate schedule towards the mirror host ("" unlimited)
	TaskInterval time.Duration
}

// SetVolumeCopy makes the agents of v's two hosts run replicators for it
// (ControllerSetup.Replicators must list both): it sets the config hook,
// so call it before StartAll.
func (l *Lab) SetVolumeCopy(v VolumeCopy) {
	l.SetConfigHook(func(h *testbed.Host, c *agent.Config) error {
		var vol agent.VolumeCfg
		var peers []agent.PeerCfg
		switch h.Name {
		case v.PrimaryHost:
			vol = agent.VolumeCfg{Name: v.Volume, Path: v.Primary, Role: "primary"}
			p := l.ReplicationPeer(v.MirrorHost)
			p.Schedule = v.Schedule
			peers = []agent.PeerCfg{p}
		case v.MirrorHost:
			if v.MirrorDir != "" {
				r, err := l.Replication(h.Name)
				if err != nil {
					return err
				}
				r.Volumes, r.Peers, r.VolumeDir = nil, nil, v.MirrorDir
				r.TaskInterval = agent.Duration(v.TaskInterval)
				c.Replication = r
				return nil
			}
			vol = agent.VolumeCfg{Name: v.Volume, Path: v.Mirror, Role: "mirror", AllowedPeers: []string{v.PrimaryHost}}
		default:
			return nil
		}
		r, err := l.Replication(h.Name)
		if err != nil {
			return err
		}
		r.Volumes, r.Peers = []agent.VolumeCfg{vol}, peers
		// A placed copy counts as in sync only after its first delta
		// cycle: a short interval keeps tests and the demo in seconds.
		r.TaskInterval = agent.Duration(v.TaskInterval)
		c.Replication = r
		return nil
	})
}
