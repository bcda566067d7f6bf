package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"jobworker/bench/godesign/pb"
)

const (
	callTimeout    = 10 * time.Second
	firstBackoff   = 100 * time.Millisecond
	maxBackoff     = 10 * time.Second
	maxSendAttempt = 20
)

// reporter is the Result Sender's gRPC side: one connection, shared by every sender
// goroutine (HTTP/2 carries their unary calls side by side).
type reporter struct {
	conn   *grpc.ClientConn
	client pb.CoreServiceClient
}

func newReporter(address string) (*reporter, error) {
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("core at %s: %w", address, err)
	}
	return &reporter{conn: conn, client: pb.NewCoreServiceClient(conn)}, nil
}

func (r *reporter) close() { _ = r.conn.Close() }

// send makes unary ReportResult calls until one succeeds; a transient failure
// (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) is retried with exponential
// backoff and full jitter, any other is logged and the result dropped.
func (r *reporter) send(result *pb.JobResult, logger *slog.Logger) {
	request := &pb.ReportResultRequest{Result: result}
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err := r.client.ReportResult(ctx, request)
		cancel()
		if err == nil {
			return
		}
		code := status.Code(err)
		transient := code == codes.Unavailable || code == codes.DeadlineExceeded ||
			code == codes.ResourceExhausted
		if !transient || attempt == maxSendAttempt {
			logger.Error("result not reported", "job_id", result.GetJobId(),
				"code", code.String(), "error", err.Error())
			return
		}
		time.Sleep(rand.N(backoff))
		backoff = min(2*backoff, maxBackoff)
	}
}
