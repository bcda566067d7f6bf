// Command worker is the original Go-Worker as the seed's README describes it, written
// as the baseline of bench/vs_go.py: a segmentio/kafka-go Reader in a consumer group
// feeds a buffered jobs channel; a fixed pool of goroutines runs each job through the
// executor registry under its timeout; a buffered results channel feeds 16 senders,
// each making unary ReportResult calls to Core; a message is committed once its result
// is reported, and the Reader sends commits every second.
//
// Settings are the seed's environment variables: KAFKA_BROKERS, KAFKA_TOPIC
// (job_requests), KAFKA_GROUP_ID, WORKER_POOL_SIZE (10), GRPC_SERVER_ADDRESS,
// MAX_JOB_TIMEOUT (30s), LOG_FORMAT (json); and LOG_LEVEL (info) and WORKER_ID. The -pool
// flag overrides WORKER_POOL_SIZE. SIGTERM or SIGINT stops it cleanly: no new jobs,
// in-flight ones finish, their results are sent and committed, the group is left.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/proto"

	"jobworker/bench/godesign/pb"
)

const (
	resultSenders  = 16
	commitInterval = time.Second
	// kafka-go waits up to 10 s by default for a fetch to fill, and Close waits for the
	// fetches in flight: 500 ms (kafka-python's fetch_max_wait_ms) keeps a stop short.
	fetchMaxWait = 500 * time.Millisecond
)

type config struct {
	brokers       []string
	topic         string
	groupID       string
	poolSize      int
	coreAddress   string
	maxJobTimeout time.Duration
	logFormat     string
	logLevel      slog.Level
	workerID      string
}

// job is one record on its way through the pool; the message is kept for its commit.
type job struct {
	message kafka.Message
	task    *pb.JobTask
	result  *pb.JobResult // set when the record is rejected before it reaches the pool
}

type outcome struct {
	message kafka.Message
	result  *pb.JobResult
}

func main() {
	pool := flag.Int("pool", 0, "worker pool size (default: WORKER_POOL_SIZE, else 10)")
	flag.Parse()
	cfg, err := loadConfig(*pool)
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: configuration error: %v\n", err)
		os.Exit(2)
	}
	logger := newLogger(cfg)
	if err := run(cfg, logger); err != nil {
		logger.Error("worker failed", "error", err.Error())
		os.Exit(1)
	}
}

func run(cfg config, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reporter, err := newReporter(cfg.coreAddress)
	if err != nil {
		return err
	}
	defer reporter.close()
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        cfg.brokers,
		GroupID:        cfg.groupID,
		Topic:          cfg.topic,
		CommitInterval: commitInterval,
		MaxWait:        fetchMaxWait,
		StartOffset:    kafka.FirstOffset,
		ErrorLogger: kafka.LoggerFunc(func(format string, args ...any) {
			logger.Warn(fmt.Sprintf(format, args...))
		}),
	})
	logger.Info("worker started", "topic", cfg.topic, "group", cfg.groupID,
		"pool", cfg.poolSize, "senders", resultSenders)

	jobs := make(chan job, cfg.poolSize)
	results := make(chan outcome, cfg.poolSize)
	var poolDone, sendersDone sync.WaitGroup
	for range cfg.poolSize {
		poolDone.Go(func() {
			for j := range jobs {
				results <- outcome{j.message, execute(j, cfg)}
			}
		})
	}
	for range resultSenders {
		sendersDone.Go(func() {
			for o := range results {
				reporter.send(o.result, logger)
				if logger.Enabled(context.Background(), slog.LevelDebug) {
					logger.Debug("job finished", "job_id", o.result.GetJobId(),
						"status", o.result.GetStatus().String())
				}
				// Async with CommitInterval: queued, sent by the Reader every second.
				if err := reader.CommitMessages(context.Background(), o.message); err != nil {
					logger.Warn("commit failed", "error", err.Error())
				}
			}
		})
	}

	consumeErr := consume(ctx, reader, jobs, cfg, logger)
	logger.Info("stopping: finishing in-flight jobs")
	close(jobs)
	poolDone.Wait()
	close(results)
	sendersDone.Wait()
	// Close sends the last commits and leaves the group.
	if err := reader.Close(); err != nil {
		logger.Warn("closing the reader", "error", err.Error())
	}
	logger.Info("worker stopped")
	return consumeErr
}

// consume decodes and validates each record into the jobs channel until ctx ends.
func consume(ctx context.Context, reader *kafka.Reader, jobs chan<- job, cfg config, logger *slog.Logger) error {
	for {
		message, err := reader.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetching from %s: %w", cfg.topic, err)
		}
		j := job{message: message}
		task := &pb.JobTask{}
		if err := proto.Unmarshal(message.Value, task); err != nil {
			logger.Warn("undecodable record skipped", "partition", message.Partition,
				"offset", message.Offset, "error", err.Error())
			_ = reader.CommitMessages(ctx, message)
			continue
		}
		j.task = task
		if task.GetId() == "" {
			logger.Warn("record without a job id skipped", "partition", message.Partition,
				"offset", message.Offset)
			_ = reader.CommitMessages(ctx, message)
			continue
		}
		if _, known := registry[task.GetType()]; !known {
			j.result = rejected(task, cfg, "unknown job type "+task.GetType().String())
		}
		select {
		case jobs <- j:
		case <-ctx.Done():
			return nil // a stop while the pool is full: the record is redelivered later
		}
	}
}

// execute runs one job under its timeout: the task's own, capped by MAX_JOB_TIMEOUT.
func execute(j job, cfg config) *pb.JobResult {
	if j.result != nil {
		return j.result
	}
	task := j.task
	timeout := cfg.maxJobTimeout
	if ms := time.Duration(task.GetTimeoutMs()) * time.Millisecond; ms > 0 && ms < timeout {
		timeout = ms
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	output, err := registry[task.GetType()](ctx, task.GetPayload())
	cancel()
	result := &pb.JobResult{
		JobId:            task.GetId(),
		Type:             task.GetType(),
		Status:           pb.JobResult_SUCCEEDED,
		Output:           output,
		Attempts:         1,
		StartedAtUnixMs:  started.UnixMilli(),
		FinishedAtUnixMs: time.Now().UnixMilli(),
		WorkerId:         cfg.workerID,
		Metadata:         task.GetMetadata(),
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		result.Status, result.Error = pb.JobResult_TIMED_OUT, "timed out after "+timeout.String()
	case err != nil:
		result.Status, result.Error = pb.JobResult_FAILED, err.Error()
	}
	return result
}

func rejected(task *pb.JobTask, cfg config, reason string) *pb.JobResult {
	now := time.Now().UnixMilli()
	return &pb.JobResult{
		JobId: task.GetId(), Type: task.GetType(), Status: pb.JobResult_REJECTED, Error: reason,
		StartedAtUnixMs: now, FinishedAtUnixMs: now, WorkerId: cfg.workerID,
		Metadata: task.GetMetadata(),
	}
}

func loadConfig(poolFlag int) (config, error) {
	var problems []string
	required := func(name string) string {
		value := os.Getenv(name)
		if value == "" {
			problems = append(problems, name+" is required")
		}
		return value
	}
	orDefault := func(name, fallback string) string {
		if value := os.Getenv(name); value != "" {
			return value
		}
		return fallback
	}
	cfg := config{
		brokers:     strings.Split(required("KAFKA_BROKERS"), ","),
		topic:       orDefault("KAFKA_TOPIC", "job_requests"),
		groupID:     required("KAFKA_GROUP_ID"),
		coreAddress: required("GRPC_SERVER_ADDRESS"),
		logFormat:   orDefault("LOG_FORMAT", "json"),
		workerID:    orDefault("WORKER_ID", hostname()),
	}
	pool, err := strconv.Atoi(orDefault("WORKER_POOL_SIZE", "10"))
	if poolFlag > 0 {
		pool, err = poolFlag, nil
	}
	if err != nil || pool < 1 {
		problems = append(problems, "WORKER_POOL_SIZE must be a positive integer")
	}
	cfg.poolSize = pool
	cfg.maxJobTimeout, err = time.ParseDuration(orDefault("MAX_JOB_TIMEOUT", "30s"))
	if err != nil || cfg.maxJobTimeout <= 0 {
		problems = append(problems, "MAX_JOB_TIMEOUT must be a positive duration such as 30s")
	}
	if cfg.logFormat != "json" && cfg.logFormat != "text" {
		problems = append(problems, "LOG_FORMAT must be json or text")
	}
	if err := cfg.logLevel.UnmarshalText([]byte(orDefault("LOG_LEVEL", "info"))); err != nil {
		problems = append(problems, "LOG_LEVEL must be debug, info, warn or error")
	}
	if len(problems) > 0 {
		return cfg, errors.New(strings.Join(problems, "; "))
	}
	return cfg, nil
}

func newLogger(cfg config) *slog.Logger {
	options := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, options))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, options))
}

func hostname() string {
	name, err := os.Hostname()
	if err != nil {
		return "go-worker"
	}
	return name
}
