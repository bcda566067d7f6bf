// Command core is the fast Core of bench/vs_go.py: CoreService on a free loopback port,
// storing nothing, counting results. It speaks bench/e2e_core.py's line protocol on
// stdin/stdout, so the harness drives it as it drives that one (BenchCore):
//
//	listening <port>        printed once, when it serves
//	stats                -> {"results", "calls", "batch_calls", "first", "last", "cpu_s"}
//	reset                -> forgets every count
//	pause / resume       -> calls wait (up to a minute, then UNAVAILABLE) / flow again
//
// --mode both answers ReportResult and ReportResults; --mode unary answers ReportResults
// with UNIMPLEMENTED: a Core written against the original, single RPC.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"jobworker/bench/godesign/pb"
)

const pausedCallWait = time.Minute

// tally counts under one mutex: a call costs far more than the lock.
type tally struct {
	mu         sync.Mutex
	results    int64
	calls      int64
	batchCalls int64
	first      float64 // ms since the epoch, as e2e_core.py reports it
	last       float64
	flowing    chan struct{} // closed while calls flow
}

func newTally() *tally {
	t := &tally{flowing: make(chan struct{})}
	close(t.flowing)
	return t
}

func (t *tally) record(results int, batch bool) {
	now := float64(time.Now().UnixNano()) / 1e6
	t.mu.Lock()
	defer t.mu.Unlock()
	t.results += int64(results)
	t.calls++
	if batch {
		t.batchCalls++
	}
	if t.first == 0 {
		t.first = now
	}
	t.last = now
}

func (t *tally) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.results, t.calls, t.batchCalls, t.first, t.last = 0, 0, 0, 0, 0
}

func (t *tally) pause() {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.flowing:
		t.flowing = make(chan struct{})
	default:
	}
}

func (t *tally) resume() {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.flowing:
	default:
		close(t.flowing)
	}
}

func (t *tally) waitIfPaused(ctx context.Context) error {
	t.mu.Lock()
	flowing := t.flowing
	t.mu.Unlock()
	select {
	case <-flowing:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-time.After(pausedCallWait):
		return status.Error(codes.Unavailable, "bench Core is paused")
	}
}

func (t *tally) stats() map[string]any {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
	t.mu.Lock()
	defer t.mu.Unlock()
	return map[string]any{
		"results": t.results, "calls": t.calls, "batch_calls": t.batchCalls,
		"first": t.first, "last": t.last, "cpu_s": cpu,
	}
}

type core struct {
	pb.UnimplementedCoreServiceServer
	tally *tally
	unary bool
}

func (c *core) ReportResult(ctx context.Context, _ *pb.ReportResultRequest) (*pb.ReportResultResponse, error) {
	if err := c.tally.waitIfPaused(ctx); err != nil {
		return nil, err
	}
	c.tally.record(1, false)
	return &pb.ReportResultResponse{}, nil
}

func (c *core) ReportResults(ctx context.Context, req *pb.ReportResultsRequest) (*pb.ReportResultsResponse, error) {
	if c.unary {
		return nil, status.Error(codes.Unimplemented, "method ReportResults not implemented")
	}
	if err := c.tally.waitIfPaused(ctx); err != nil {
		return nil, err
	}
	c.tally.record(len(req.GetResults()), true)
	return &pb.ReportResultsResponse{}, nil
}

func main() {
	mode := flag.String("mode", "both", "both: ReportResult and ReportResults; unary: ReportResults is UNIMPLEMENTED")
	address := flag.String("listen", "127.0.0.1:0", "host:port to serve on (port 0: a free one)")
	flag.Parse()
	if *mode != "both" && *mode != "unary" {
		fmt.Fprintf(os.Stderr, "core: --mode must be both or unary, not %q\n", *mode)
		os.Exit(2)
	}
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		fmt.Fprintf(os.Stderr, "core: cannot listen on %s: %v\n", *address, err)
		os.Exit(1)
	}
	t := newTally()
	server := grpc.NewServer()
	pb.RegisterCoreServiceServer(server, &core{tally: t, unary: *mode == "unary"})
	go func() { _ = server.Serve(listener) }()
	out := bufio.NewWriter(os.Stdout)
	reply := func(line string) {
		out.WriteString(line + "\n")
		out.Flush()
	}
	reply(fmt.Sprintf("listening %d", listener.Addr().(*net.TCPAddr).Port))
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		command, _, _ := strings.Cut(strings.TrimSpace(lines.Text()), " ")
		switch command {
		case "stats":
			encoded, _ := json.Marshal(t.stats())
			reply(string(encoded))
		case "reset":
			t.reset()
			reply("ok")
		case "pause":
			t.pause()
			reply("ok")
		case "resume":
			t.resume()
			reply("ok")
		default:
			reply(fmt.Sprintf("unknown command %q", command))
		}
	}
	// stdin closed: the harness is done; let waiting calls end.
	t.resume()
	stopped := make(chan struct{})
	go func() { server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Second):
		server.Stop()
	}
}
