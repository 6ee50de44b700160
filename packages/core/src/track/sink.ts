/** One row of metrics: flat, JSON-serialisable values (a non-finite number is written as null). */
export type Metrics = Record<string, number | string | boolean | null>;

/** Where metrics go. `log` never waits on I/O that can stall; `close` flushes and releases. */
export interface MetricSink {
  log(m: Metrics): void;
  close(): Promise<void>;
}
