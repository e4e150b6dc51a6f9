/**
 * A real browser for tests of server-rendered pages: Debian's chromium
 * (installed by scripts/install-system-packages.sh, which `.ci/run` calls),
 * driven by playwright-core, headless, in a context of its own per test. Never
 * a downloaded browser. Without chromium the test fails, naming the command.
 */
import { existsSync } from "node:fs";
import { type Browser, type BrowserContext, chromium } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
const INSTALL_COMMAND = "scripts/install-system-packages.sh";

/** Launches chromium headless with the flags a container needs; throws, naming the install command, without it. */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} (Debian package chromium) is not installed: the browser tests need it. Run ${INSTALL_COMMAND} (as root, or with sudo)`,
    );
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A fresh context (its own cookies), JavaScript on or off. */
export function newContext(browser: Browser, opts: { javaScript?: boolean } = {}): Promise<BrowserContext> {
  return browser.newContext({ javaScriptEnabled: opts.javaScript ?? true });
}
