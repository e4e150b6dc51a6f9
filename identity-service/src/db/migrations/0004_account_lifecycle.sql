CREATE TABLE "deleted_identities" (
	"customer_id" uuid PRIMARY KEY NOT NULL,
	"deleted_at" timestamp (6) with time zone NOT NULL,
	"deleted_by" text NOT NULL
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
ALTER TABLE "identities" ADD COLUMN "disabled_at" timestamp (6) with time zone;--> statement-breakpoint
ALTER TABLE "refresh_tokens" ADD COLUMN "user_agent" text;--> statement-breakpoint
ALTER TABLE "refresh_tokens" ADD COLUMN "ip_address" text;--> statement-breakpoint
CREATE INDEX "stream_purges_pending_idx" ON "stream_purges" USING btree ("created_at");