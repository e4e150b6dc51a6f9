CREATE TABLE "erasures" (
	"customer_id" uuid PRIMARY KEY NOT NULL,
	"erased_at" timestamp (6) with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "stream_purges" (
	"id" uuid PRIMARY KEY NOT NULL,
	"stream" text NOT NULL,
	"subject" text NOT NULL,
	"after_event_id" uuid NOT NULL,
	"created_at" timestamp (6) with time zone NOT NULL,
	"done_at" timestamp (6) with time zone,
	"attempts" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE INDEX "stream_purges_pending_idx" ON "stream_purges" USING btree ("created_at");