// Package testnet gives tests loopback listeners they can close and open
// again on the same address: a test that restarts a server where its
// peers expect it.
//
// A port from "127.0.0.1:0" lies in the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), so once the server closes it any
// outgoing connection on the machine — another test package's client, or
// a peer redialling the stopped server, which can connect to itself by
// TCP simultaneous open — may take it as its source port, and the restart
// fails with "address already in use". Ports below the ephemeral range are
// only ever taken by an explicit bind.
package testnet

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lowest port tried: above the ports of common local services.
const lowest = 10000

// Listen opens a TCP listener on host (an IP literal) at a free port
// below the ephemeral range; where that range cannot be read or leaves no
// room below it, at a port the kernel picks.
func Listen(network, host string) (net.Listener, error) {
	if lo, ok := ephemeralLow(); ok && lo-lowest >= 1000 {
		for range 200 {
			port := lowest + rand.IntN(lo-lowest)
			ln, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
			if err == nil {
				return ln, nil
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				return nil, err
			}
		}
	}
	return net.Listen(network, net.JoinHostPort(host, "0"))
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= 0 || lo > 65535 {
		return 0, false
	}
	return lo, true
}

// Relisten opens a listener again on addr (a restarted server keeps the
// address its peers know), retrying while another socket holds it, for at
// most within. Below the ephemeral range only an explicit bind takes a
// port, but another test package's Listen may still pick it in the moment
// the server is down.
func Relisten(network, addr string, within time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(within)
	for {
		ln, err := net.Listen(network, addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
