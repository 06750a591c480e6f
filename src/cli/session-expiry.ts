/**
 * The mount session's expiry from POGFS_SESSION_EXPIRY_SECONDS, which only tests set (so a
 * killed daemon's session expires within their time); otherwise the engine's own.
 */
export function sessionExpiryMs(): number | undefined {
  const s = Number(process.env.POGFS_SESSION_EXPIRY_SECONDS);
  return Number.isFinite(s) && s > 0 ? s * 1000 : undefined;
}
