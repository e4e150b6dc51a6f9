/** The row for `key`, or `undefined` if the statement returned none. */
export type BatchRead<K, V> = (key: K) => Promise<V | undefined>;

export interface BatchReadOptions<K, V> {
  /** One statement for many keys; the rows in any order, absent keys left out. */
  readMany(keys: K[]): Promise<V[]>;
  /** The key a row answers. */
  keyOf(row: V): K;
  /** At most this many keys in one statement (default 100); more go in the next. */
  maxKeys?: number;
}

interface Waiter<K, V> {
  key: K;
  resolve(row: V | undefined): void;
  reject(error: unknown): void;
}

/**
 * Reads by key, gathered: the keys asked for while the event loop serves one
 * round of I/O are read together in one statement, each caller answered with
 * its own row. A read issued under load (requests from many streams parsed in
 * one socket read) costs one round trip for the batch instead of one each; a
 * lone read waits only for the end of the current I/O round (`setImmediate`).
 *
 * Nothing is cached: every key is read by a statement issued after it was
 * asked for, so a read never sees less than a read of its own would.
 */
export function createBatchRead<K, V>(opts: BatchReadOptions<K, V>): BatchRead<K, V> {
  const maxKeys = Math.max(1, opts.maxKeys ?? 100);
  let waiting: Waiter<K, V>[] = [];
  let scheduled = false;

  const flush = () => {
    scheduled = false;
    const batch = waiting;
    waiting = [];
    for (let i = 0; i < batch.length; i += maxKeys) void run(batch.slice(i, i + maxKeys));
  };

  // Never rejects: a failed statement (or a throwing keyOf) fails every read of its batch, and only those.
  const run = async (batch: Waiter<K, V>[]) => {
    try {
      const rows = await opts.readMany([...new Set(batch.map((w) => w.key))]);
      const byKey = new Map<K, V>();
      for (const row of rows) byKey.set(opts.keyOf(row), row);
      for (const w of batch) w.resolve(byKey.get(w.key));
    } catch (error) {
      for (const w of batch) w.reject(error);
    }
  };

  return (key: K) =>
    new Promise<V | undefined>((resolve, reject) => {
      waiting.push({ key, resolve, reject });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}
