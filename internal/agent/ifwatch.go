package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ifaceDebounce gathers the events of one change (a device deleted and
// re-created, an address replaced) into one refresh.
const ifaceDebounce = 200 * time.Millisecond

// watchInterfaces signals on changed (debounced) whenever a configured
// interface appears, disappears or is renamed, or an address of an
// attached interface is added or removed, until ctx ends. A lost subscription
// signals too (events may have been missed) and resubscribes.
func (a *Agent) watchInterfaces(ctx context.Context, changed chan<- struct{}) {
	a.mu.Lock()
	cfg := a.cfg // what it names changes only with a restart
	a.mu.Unlock()
	names := append(cfg.RouterInterfaceNames(), cfg.DecapInterfaceNames()...)
	root := cfg.XDPRoot != nil
	signal := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := a.watchInterfacesOnce(ctx, names, root, signal)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("interface watch interrupted; a re-created interface is attached again when it resumes",
			"err", err, "retry_in", backoff)
		signal()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (a *Agent) watchInterfacesOnce(ctx context.Context, names []string, root bool, signal func()) error {
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	lost := make(chan error, 2)
	cb := func(err error) {
		select {
		case lost <- err:
		default:
		}
	}
	// Once done is closed, each subscription closes its channel after its
	// socket: drain them then, so none blocks on a full channel. Not
	// before: a drain running beside the loop below would take a share
	// of the updates, which the loop would never see.
	var started []func()
	defer func() {
		close(done)
		for _, drain := range started {
			drain()
		}
	}()
	drain := func(f func()) { started = append(started, f) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: a.netns, ErrorCallback: cb}); err != nil {
		return fmt.Errorf("subscribe to links: %w", err)
	}
	drain(func() {
		for range links {
		}
	})
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: a.netns, ErrorCallback: cb}); err != nil {
		return fmt.Errorf("subscribe to addresses: %w", err)
	}
	drain(func() {
		for range addrs {
		}
	})
	// Whatever changed before the subscriptions existed is looked at now.
	signal()
	var fire <-chan time.Time
	arm := func() {
		if fire == nil {
			fire = time.After(ifaceDebounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			return fmt.Errorf("%w: %w", errSubscriptionLost, err)
		case u, ok := <-links:
			if !ok {
				return fmt.Errorf("%w (links)", errSubscriptionLost)
			}
			// Ours by name, or by index: an attached device renamed.
			if slices.Contains(names, u.Attrs().Name) || a.attachedAt(u.Attrs().Index) {
				arm()
			}
		case u, ok := <-addrs:
			if !ok {
				return fmt.Errorf("%w (addresses)", errSubscriptionLost)
			}
			// Only the attached interfaces' addresses are read (a node
			// adding link-local addresses to every new pod veth costs
			// nothing); behind xdp_root no attachment names a device.
			if root || a.attachedAt(u.LinkIndex) {
				arm()
			}
		case <-fire:
			fire = nil
			signal()
		}
	}
}

// missingAny reports whether a configured interface is gone (or failed to
// attach again): Run then looks every few seconds besides the events, so
// a missed event or a failed attach does not leave it unattached.
func (a *Agent) missingAny() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.missing) > 0
}

func (a *Agent) attachedAt(ifindex int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.ContainsFunc(a.attach, func(at *Attachment) bool { return at.Ifindex == ifindex })
}

// refreshInterfaces brings the attachments and the addresses taken from
// the interfaces up to date after watchInterfaces saw a change: a
// configured interface that is gone is reported (healthz) until it
// returns; one that returned, or was re-created under its name with a new
// ifindex, gets its program again (its chain slot first, as at start);
// outer sources and decap endpoints read from the interfaces are applied
// again. Down/up and MTU changes keep the program and need nothing.
func (a *Agent) refreshInterfaces() error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	return inNS(a.netns, func() error {
		var errs []error
		if a.cfg.XDPRoot == nil {
			if a.router != nil {
				errs = append(errs, a.reattach(a.router.Program(), a.router, "router", a.cfg.RouterInterfaceNames()))
			}
			if a.decap != nil {
				errs = append(errs, a.reattach(a.decap.Program(), a.decap, "decap", a.cfg.DecapInterfaceNames()))
			}
		}
		a.mu.Lock()
		cfg := a.cfg
		a.mu.Unlock()
		derived := (a.router != nil && (cfg.OuterSourceV4 == "" || cfg.OuterSourceV6 == "")) ||
			(a.decap != nil && len(cfg.DecapAddresses) == 0)
		if derived {
			if err := a.apply(cfg); err != nil {
				errs = append(errs, fmt.Errorf("apply the interfaces' addresses: %w", err))
			}
		}
		return errors.Join(errs...)
	})
}

// reattach checks the role's attachments against the interfaces now.
func (a *Agent) reattach(prog *ebpf.Program, slot chainSlot, name string, ifaces []string) error {
	var present []string
	var stale []*Attachment // attachments whose device is gone or re-created
	missing := map[string]bool{}
	a.mu.Lock()
	cur := map[string]*Attachment{}
	for _, at := range a.attach {
		if at.Program == name {
			cur[at.Iface] = at
		}
	}
	a.mu.Unlock()
	for _, iface := range ifaces {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				return fmt.Errorf("interface %s: %w", iface, err)
			}
			missing[iface] = true
			if at := cur[iface]; at != nil {
				stale = append(stale, at)
			}
			continue
		}
		present = append(present, iface)
		if at := cur[iface]; at != nil && at.Ifindex != l.Attrs().Index {
			stale = append(stale, at)
		}
	}
	a.mu.Lock()
	for _, at := range stale {
		a.attach = slices.DeleteFunc(a.attach, func(x *Attachment) bool { return x == at })
		at.Close()
	}
	for _, iface := range ifaces {
		k := iface + "_" + name
		switch {
		case missing[iface] && !a.missing[k]:
			a.log.Warn("configured interface is gone: nothing steers its traffic until it returns", "iface", iface, "program", name)
			a.missing[k] = true
		case !missing[iface]:
			delete(a.missing, k)
		}
	}
	todo := slices.DeleteFunc(slices.Clone(present), func(iface string) bool {
		return slices.ContainsFunc(a.attach, func(at *Attachment) bool { return at.Program == name && at.Iface == iface })
	})
	a.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	if err := setupChain(a.log, a.cfg, slot, name, present); err != nil {
		return err
	}
	var errs []error
	for _, iface := range todo {
		at, err := attachXDP(prog, name, iface, a.cfg.XDPMode, a.cfg.PinDir, a.cfg.XDPChain, slot)
		if err != nil {
			errs = append(errs, err)
			a.mu.Lock()
			a.missing[iface+"_"+name] = true
			a.mu.Unlock()
			continue
		}
		a.log.Info("xdp program ready", "iface", iface, "program", name, "mode", at.Mode, "action", at.Action, "via", at.Via,
			"ifindex", at.Ifindex, "why", "interface changed")
		a.mu.Lock()
		a.attach = append(a.attach, at)
		a.mu.Unlock()
	}
	return errors.Join(errs...)
}

// inNS runs f on a thread in namespace h (nil: the calling thread's): the
// interfaces and addresses the agent manages are in the namespace Start
// ran in, whichever thread Run's loop is on.
func inNS(h *netns.NsHandle, f func() error) error {
	if h == nil {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(*h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked: Go ends it with the goroutine.
		return errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
