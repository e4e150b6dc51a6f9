CREATE TABLE "authorization_requests" (
	"id" uuid PRIMARY KEY NOT NULL,
	"csrf_hash" "bytea" NOT NULL,
	"client_id" text NOT NULL,
	"redirect_uri" text NOT NULL,
	"state" text,
	"nonce" text,
	"scope" text NOT NULL,
	"audiences" text[] NOT NULL,
	"code_challenge" text NOT NULL,
	"stage" text NOT NULL,
	"customer_id" uuid,
	"auth_time" timestamp (6) with time zone,
	"code_hash" "bytea",
	"code_expires_at" timestamp (6) with time zone,
	"family_id" uuid,
	"user_agent" text,
	"ip_address" text,
	"created_at" timestamp (6) with time zone NOT NULL,
	"expires_at" timestamp (6) with time zone NOT NULL,
	CONSTRAINT "authorization_requests_code_hash_unique" UNIQUE("code_hash")
);
--> statement-breakpoint
ALTER TABLE "clients" ADD COLUMN "redirect_uris" text[] DEFAULT '{}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "clients" ADD COLUMN "post_logout_redirect_uris" text[] DEFAULT '{}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "clients" ADD COLUMN "grant_types" text[] DEFAULT '{client_credentials}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "clients" ADD COLUMN "is_public" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "clients" ADD COLUMN "first_party" boolean DEFAULT false NOT NULL;--> statement-breakpoint
CREATE INDEX "authorization_requests_expires_idx" ON "authorization_requests" USING btree ("expires_at");