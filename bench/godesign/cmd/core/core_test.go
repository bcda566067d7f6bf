package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"jobworker/bench/godesign/pb"
)

func TestBothModeCountsEveryResult(t *testing.T) {
	c := &core{tally: newTally()}
	ctx := context.Background()
	if _, err := c.ReportResult(ctx, &pb.ReportResultRequest{Result: &pb.JobResult{JobId: "a"}}); err != nil {
		t.Fatal(err)
	}
	batch := &pb.ReportResultsRequest{Results: []*pb.JobResult{{JobId: "b"}, {JobId: "c"}}}
	if _, err := c.ReportResults(ctx, batch); err != nil {
		t.Fatal(err)
	}
	stats := c.tally.stats()
	if stats["results"] != int64(3) || stats["calls"] != int64(2) || stats["batch_calls"] != int64(1) {
		t.Fatalf("stats: %v", stats)
	}
	c.tally.reset()
	if stats = c.tally.stats(); stats["results"] != int64(0) || stats["first"] != float64(0) {
		t.Fatalf("after reset: %v", stats)
	}
}

func TestUnaryModeRefusesTheBatchedRPC(t *testing.T) {
	c := &core{tally: newTally(), unary: true}
	_, err := c.ReportResults(context.Background(), &pb.ReportResultsRequest{Results: []*pb.JobResult{{JobId: "a"}}})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("got %v", err)
	}
	if c.tally.stats()["results"] != int64(0) {
		t.Fatal("a refused batch was counted")
	}
}

func TestPausedCallsWaitForResume(t *testing.T) {
	c := &core{tally: newTally()}
	c.tally.pause()
	done := make(chan error)
	go func() {
		_, err := c.ReportResult(context.Background(), &pb.ReportResultRequest{})
		done <- err
	}()
	select {
	case <-done:
		t.Fatal("a call went through a paused Core")
	case <-time.After(50 * time.Millisecond):
	}
	c.tally.resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
