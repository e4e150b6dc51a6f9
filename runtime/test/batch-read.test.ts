/**
 * createBatchRead's gathering: what is asked for in one I/O round is read in
 * one statement, each caller gets its own row, and a failure stays within its
 * batch. (The statement itself, against PostgreSQL, is GetCustomer's: see
 * customer-service/test/customer-service.test.ts, "GetCustomer reads gathered".)
 */
import { describe, expect, it } from "vitest";
import { createBatchRead } from "../src/batch-read.js";

interface Row {
  id: string;
  n: number;
}

/** A readMany over a fixed table that records the keys of each call. */
function table(rows: Row[]) {
  const calls: string[][] = [];
  let fail: unknown;
  return {
    calls,
    failNext(error: unknown) {
      fail = error;
    },
    readMany: async (keys: string[]) => {
      calls.push(keys);
      if (fail !== undefined) {
        const error = fail;
        fail = undefined;
        throw error;
      }
      return rows.filter((r) => keys.includes(r.id));
    },
  };
}

const ROWS = [
  { id: "a", n: 1 },
  { id: "b", n: 2 },
  { id: "c", n: 3 },
];

describe("createBatchRead", () => {
  it("reads what is asked in one round with one call, each caller getting its own row", async () => {
    const t = table(ROWS);
    const read = createBatchRead({ readMany: t.readMany, keyOf: (r: Row) => r.id });
    const got = await Promise.all(["c", "a", "missing", "a", "b"].map((k) => read(k)));
    expect(got).toEqual([ROWS[2], ROWS[0], undefined, ROWS[0], ROWS[1]]);
    expect(t.calls).toEqual([["c", "a", "missing", "b"]]);
  });

  it("reads a key asked after the last round in a statement of its own", async () => {
    const t = table(ROWS);
    const read = createBatchRead({ readMany: t.readMany, keyOf: (r: Row) => r.id });
    expect(await read("a")).toEqual(ROWS[0]);
    expect(await read("a")).toEqual(ROWS[0]);
    expect(await read("b")).toEqual(ROWS[1]);
    expect(t.calls).toEqual([["a"], ["a"], ["b"]]);
  });

  it("splits a round into statements of at most maxKeys callers", async () => {
    const t = table(ROWS);
    const read = createBatchRead({ readMany: t.readMany, keyOf: (r: Row) => r.id, maxKeys: 2 });
    const got = await Promise.all(["a", "b", "c", "a", "zz"].map((k) => read(k)));
    expect(got).toEqual([ROWS[0], ROWS[1], ROWS[2], ROWS[0], undefined]);
    expect(t.calls).toEqual([["a", "b"], ["c", "a"], ["zz"]]);
  });

  it("fails every read of a failed statement with its error, and only those", async () => {
    const t = table(ROWS);
    const read = createBatchRead({ readMany: t.readMany, keyOf: (r: Row) => r.id });
    const boom = new Error("connection lost");
    t.failNext(boom);
    const failed = await Promise.allSettled([read("a"), read("b")]);
    expect(failed).toEqual([
      { status: "rejected", reason: boom },
      { status: "rejected", reason: boom },
    ]);
    expect(await Promise.all([read("a"), read("c")])).toEqual([ROWS[0], ROWS[2]]);
  });

  it("turns a readMany or keyOf that throws synchronously into failed reads, not an uncaught exception", async () => {
    const throwing = createBatchRead<string, Row>({
      readMany: () => {
        throw new Error("bad statement");
      },
      keyOf: (r) => r.id,
    });
    await expect(throwing("a")).rejects.toThrow("bad statement");
    const badKey = createBatchRead({
      readMany: table(ROWS).readMany,
      keyOf: (): string => {
        throw new Error("no key");
      },
    });
    await expect(Promise.all([badKey("a"), badKey("b")])).rejects.toThrow("no key");
  });
});
