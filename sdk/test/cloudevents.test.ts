/**
 * The CloudEvents headers through real NATS header objects: a publisher's
 * set is complete and reads back as it was written; what is missing or
 * broken reads as "" (time: undefined) rather than throwing.
 */
import { randomUUID } from "node:crypto";
import { headers } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import {
  CE_SUBJECT,
  CE_TIME,
  CE_TYPE,
  CLOUDEVENT_HEADER_NAMES,
  cloudEventHeaders,
  readCloudEvent,
  setCloudEventHeaders,
} from "../src/cloudevents.js";

const attrs = {
  id: randomUUID(),
  type: "customer.v1.CustomerUpdated",
  source: "customer-service",
  time: new Date("2026-01-02T03:04:05.678Z"),
  subject: randomUUID(),
};

describe("CloudEvents headers", () => {
  it("sets every binary-mode header a platform event carries", () => {
    expect(cloudEventHeaders(attrs)).toEqual({
      "ce-specversion": "1.0",
      "ce-id": attrs.id,
      "ce-type": "customer.v1.CustomerUpdated",
      "ce-source": "customer-service",
      "ce-time": "2026-01-02T03:04:05.678Z",
      "ce-subject": attrs.subject,
      "ce-datacontenttype": "application/protobuf",
      "content-type": "application/protobuf",
    });
    const h = setCloudEventHeaders(headers(), attrs);
    expect([...h.keys()].sort()).toEqual([...CLOUDEVENT_HEADER_NAMES].sort());
  });

  it("reads back what a publisher set, through a NATS header object", () => {
    const h = headers();
    setCloudEventHeaders(h, attrs);
    expect(readCloudEvent(h)).toEqual({
      specversion: "1.0",
      ...attrs,
      datacontenttype: "application/protobuf",
    });
  });

  it("reads missing headers as empty and a broken time as undefined", () => {
    expect(readCloudEvent(undefined)).toEqual({
      specversion: "",
      id: "",
      type: "",
      source: "",
      time: undefined,
      subject: "",
      datacontenttype: "",
    });
    const h = headers();
    h.set(CE_TYPE, "identity.v1.TokensRevoked");
    h.set(CE_SUBJECT, "orders-service");
    h.set(CE_TIME, "yesterday");
    expect(readCloudEvent(h)).toMatchObject({
      type: "identity.v1.TokensRevoked",
      subject: "orders-service",
      time: undefined,
    });
  });
});
