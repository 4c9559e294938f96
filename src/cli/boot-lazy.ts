/** What `osfarm boot` says about a lazy boot (docs/lazy-boot.md); a helper of commands/boot.ts, not a command. */
import { isAbortError } from '../base/errors.js';
import type { LazyEvent, LazyExport, LazyPullResult } from '../transfer/lazy/export.js';
import type { CommandContext } from './command.js';
import { bytes } from './format.js';

/** What `osfarm boot URL` says about the lazy export while the console runs: problems on stderr, everything in --json. */
export function lazyEvents(ctx: CommandContext): (e: LazyEvent) => void {
  return (e) => {
    if (e.type === 'result') return;
    if (e.type === 'ready') ctx.info(`osfarm: serving the image lazily at ${e.uri} (${e.haveBlocks} of ${e.blockCount} blocks here, profile: ${e.profile})`);
    if (e.type === 'bad-block' || e.type === 'fetch-failed' || e.type === 'stalled' || e.type === 'warning') ctx.info(`osfarm: ${e.type}: ${e.message}`);
    if (e.type !== 'progress') ctx.event({ ...e, type: `lazy-${e.type}` });
  };
}

/** When the boot's marker came: keeps the read order so far as the image's boot profile, if it came without one. */
export function markProfile(exp: LazyExport): Promise<string> | undefined {
  return exp.profileSource === 'none' ? exp.saveProfile() : undefined;
}

/**
 * After the VM: waits until the image is complete and published (unless interrupted, or
 * not prefetching: then what arrived stays for the next run), reports the profile
 * `markProfile` kept, and closes the export.
 */
export async function finishLazy(exp: LazyExport, ctx: CommandContext, profile: Promise<string> | undefined, prefetch: boolean): Promise<LazyPullResult | null> {
  profile?.catch(() => {}); // settles with the export
  try {
    if (ctx.signal.aborted) return null;
    if (!prefetch) {
      const s = exp.stats();
      ctx.info(`osfarm: --no-prefetch: ${s.haveBlocks} of ${s.blockCount} blocks here, kept for the next run; the image is not published`);
      return null;
    }
    ctx.info(`osfarm: fetching the rest of image ${exp.digest} (Ctrl-C stops; the next run resumes)`);
    const result = await exp.completed;
    if (profile) ctx.info(`osfarm: boot profile kept in ${await profile}`);
    ctx.info(`osfarm: image ${result.digest} published (${bytes(result.bytesFetched)} fetched)`);
    return result;
  } catch (err) {
    if (isAbortError(err)) return null;
    throw err;
  } finally {
    await exp.close();
  }
}
