CREATE TABLE "customers" (
	"customer_id" uuid PRIMARY KEY NOT NULL,
	"email" text NOT NULL,
	"given_name" text NOT NULL,
	"family_name" text NOT NULL,
	"phone_number" text,
	"address" jsonb,
	"version" bigint DEFAULT 1 NOT NULL,
	"create_time" timestamp (6) with time zone NOT NULL,
	"update_time" timestamp (6) with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "outbox" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"event_id" uuid NOT NULL,
	"subject" text NOT NULL,
	"type" text NOT NULL,
	"source" text NOT NULL,
	"ce_subject" text NOT NULL,
	"payload" "bytea" NOT NULL,
	"occur_time" timestamp (6) with time zone NOT NULL,
	"published_at" timestamp (6) with time zone,
	"attempts" integer DEFAULT 0 NOT NULL,
	CONSTRAINT "outbox_event_id_unique" UNIQUE("event_id")
);
--> statement-breakpoint
CREATE UNIQUE INDEX "customers_email_key" ON "customers" USING btree (lower("email"));--> statement-breakpoint
CREATE INDEX "outbox_unpublished_idx" ON "outbox" USING btree ("id") WHERE published_at is null;