package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	pmaps "github.com/premirror/premirror/internal/maps"
)

// XDPRoot runs premirror's program behind another XDP program instead of
// on the interfaces: a root program that the operator attached (a DDoS
// filter, a dispatcher in Katran's shared mode) tail-calls it through a
// program array pinned on bpffs. The agent puts its program in the
// array's slot Key (replacing its previous one atomically on upgrades)
// and attaches nothing itself; the root decides which packets premirror
// sees. What premirror passes still goes to xdp_chain's program when set.
type XDPRoot struct {
	// ProgArray is the bpffs path of the root's BPF_MAP_TYPE_PROG_ARRAY.
	ProgArray string `yaml:"prog_array"`
	// Key is premirror's slot in it.
	Key uint32 `yaml:"key"`
}

func (r *XDPRoot) validate(c *Config) error {
	switch {
	case r == nil:
		return nil
	case r.ProgArray == "":
		return errors.New("xdp_root.prog_array: missing (the bpffs path of the root program's tail-call array)")
	case !strings.HasPrefix(r.ProgArray, "/"):
		return fmt.Errorf("xdp_root.prog_array: %q must be an absolute path on a bpffs", r.ProgArray)
	case c.Role == RoleBoth:
		return errors.New("xdp_root: only for role edge or mirror (one program goes in the root's slot)")
	case c.XDPChain != nil && c.XDPChain.TakeOverAttached:
		return errors.New("xdp_root: excludes xdp_chain.take_over_attached (premirror attaches to no interface)")
	}
	return nil
}

// rootPin records a root attachment under pinDir: a second pin of the
// root's array, named for our program and slot, so that detach finds it
// without the config.
func rootPin(pinDir, name string, key uint32) string {
	return filepath.Join(pinDir, "root", fmt.Sprintf("%s-%d", name, key))
}

// attachRoot puts prog (ours, named name) in slot key of the root's
// program array and records it; a record of ours for another slot or
// array is undone first (the config changed).
func attachRoot(prog *ebpf.Program, name, pinDir string, root *XDPRoot) (*Attachment, error) {
	arr, err := ebpf.LoadPinnedMap(root.ProgArray, nil)
	if err != nil {
		return nil, fmt.Errorf("xdp_root.prog_array: %w", err)
	}
	defer arr.Close()
	if arr.Type() != ebpf.ProgramArray {
		return nil, fmt.Errorf("xdp_root.prog_array: %s is a %v map, not a program array", root.ProgArray, arr.Type())
	}
	if root.Key >= arr.MaxEntries() {
		return nil, fmt.Errorf("xdp_root.key: %d is beyond the array's %d slots", root.Key, arr.MaxEntries())
	}
	pin := rootPin(pinDir, name, root.Key)
	if err := detachRoots(pinDir, name, pin, root.ProgArray); err != nil {
		return nil, err
	}
	action := "attached"
	if id, ok := slotProgram(arr, root.Key); ok {
		if ours, _ := programNamed(id, "pm_"+name); ours {
			action = "updated"
		}
	}
	if err := arr.Update(root.Key, prog, ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("xdp_root: put the %s program in %s[%d]: %w (the root must be an XDP program loaded like ours: "+
			"expected attach type BPF_XDP, JIT-compiled, not xdp.frags)", name, root.ProgArray, root.Key, err)
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	if _, err := os.Stat(pin); err != nil {
		rec, err := arr.Clone() // a clone is unpinned: Pin adds a path, it does not move the root's
		if err != nil {
			return nil, err
		}
		defer rec.Close()
		if err := rec.Pin(pin); err != nil {
			return nil, fmt.Errorf("pin %s: %w", pin, err)
		}
	}
	return &Attachment{Iface: "*", Ifindex: 0, Program: name, Mode: "root", Action: action, Via: "prog_array"}, nil
}

// slotProgram is the ID of the program in slot key of a program array.
func slotProgram(arr *ebpf.Map, key uint32) (ebpf.ProgramID, bool) {
	var id uint32
	if err := arr.Lookup(key, &id); err != nil || id == 0 {
		return 0, false
	}
	return ebpf.ProgramID(id), true
}

// programNamed reports whether program id is named name; false without
// an error when the program is gone. Any other failure to open it (EPERM
// without CAP_SYS_ADMIN) is an error: the caller cannot tell whether the
// slot holds ours.
func programNamed(id ebpf.ProgramID, name string) (bool, error) {
	p, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open program %d: %w", id, pmaps.ByIDError(err))
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && info.Name == name, nil
}

// detachRoots empties the slots our root records under pinDir point at
// (only where the slot still holds a program of ours, named pm_<name>;
// every name when name is "") and removes the records, except keep,
// when it is a record of keepArray's array.
func detachRoots(pinDir, name, keep, keepArray string) error {
	recs, _ := filepath.Glob(filepath.Join(pinDir, "root", "*"))
	var errs []error
	for _, rec := range recs {
		base := filepath.Base(rec)
		i := strings.LastIndexByte(base, '-')
		key, err := strconv.ParseUint(base[i+1:], 10, 32)
		if i < 0 || err != nil {
			errs = append(errs, os.Remove(rec))
			continue
		}
		prog := base[:i]
		if name != "" && prog != name {
			continue
		}
		arr, err := ebpf.LoadPinnedMap(rec, nil)
		if err != nil {
			errs = append(errs, os.Remove(rec))
			continue
		}
		if rec == keep && sameMap(arr, keepArray) {
			arr.Close()
			continue
		}
		if id, ok := slotProgram(arr, uint32(key)); ok {
			ours, err := programNamed(id, "pm_"+prog)
			if err != nil {
				// Keep the record: without it nothing would ever empty
				// the slot, and the root would call our program on.
				arr.Close()
				errs = append(errs, fmt.Errorf("slot %d of the root's array (%s): %w", key, rec, err))
				continue
			}
			if ours {
				if err := arr.Delete(uint32(key)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, fmt.Errorf("empty slot %d of the root's array (%s): %w", key, rec, err))
				}
			}
		}
		arr.Close()
		errs = append(errs, os.Remove(rec))
	}
	return errors.Join(errs...)
}

// sameMap reports whether arr is the map pinned at path.
func sameMap(arr *ebpf.Map, path string) bool {
	other, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return false
	}
	defer other.Close()
	a, err1 := arr.Info()
	b, err2 := other.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	ida, ok1 := a.ID()
	idb, ok2 := b.ID()
	return ok1 && ok2 && ida == idb
}
