/**
 * A fair bound on concurrent work (argon2 hashing and verification).
 *
 * At most `concurrency` tasks run at once (sized to libuv's thread pool, so
 * argon2 never queues invisibly inside it). Waiting tasks are kept per client
 * (address) and served round robin: one flooding address waits behind its own
 * tasks, while a task from another address takes the next free slot. Each
 * client may have at most `maxQueuedPerClient` tasks waiting, and all clients
 * together `maxQueued`; past that a task is refused at once with
 * RESOURCE_EXHAUSTED (RetryInfo), never queued without bound.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";

export interface FairQueueSettings {
  /** Tasks running at once. */
  concurrency: number;
  /** Tasks one client may have waiting. */
  maxQueuedPerClient: number;
  /** Tasks all clients together may have waiting. */
  maxQueued: number;
}

export interface FairQueue {
  /** Runs work once a slot is free and it is client's turn; RESOURCE_EXHAUSTED if client's queue is full. */
  run<T>(client: string, work: () => Promise<T>): Promise<T>;
  /** Tasks running now, and waiting. */
  stats(): { running: number; queued: number };
}

type Task = () => void;

/** A fair queue with the given bounds. */
export function createFairQueue(s: FairQueueSettings): FairQueue {
  // Clients with waiting tasks, in round-robin order: Map keeps insertion order; a served client moves to the back.
  const waiting = new Map<string, Task[]>();
  let running = 0;
  let queued = 0;

  const dispatch = () => {
    while (running < s.concurrency) {
      const next = waiting.entries().next();
      if (next.done) return;
      const [client, tasks] = next.value;
      const task = tasks.shift();
      waiting.delete(client);
      if (tasks.length > 0) waiting.set(client, tasks);
      if (!task) continue;
      queued--;
      running++;
      task();
    }
  };

  return {
    run(client, work) {
      return new Promise((resolve, reject) => {
        const start = () => {
          work()
            .then(resolve, reject)
            .finally(() => {
              running--;
              dispatch();
            });
        };
        const tasks = waiting.get(client);
        if (!tasks && running < s.concurrency) {
          running++;
          start();
          return;
        }
        if ((tasks?.length ?? 0) >= s.maxQueuedPerClient || queued >= s.maxQueued) {
          reject(busy());
          return;
        }
        if (tasks) tasks.push(start);
        else waiting.set(client, [start]);
        queued++;
        dispatch();
      });
    },
    stats: () => ({ running, queued }),
  };
}

function busy(): ConnectError {
  return new ConnectError("too many password checks in progress, retry in 1s", Code.ResourceExhausted, undefined, [
    { desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(1000) }) },
  ]);
}
