/** `osfarm pull --lazy` (docs/lazy-boot.md); a helper of commands/pull.ts, not a command. */
import { type LazyPullResult, pullLazy } from '../transfer/lazy/export.js';
import { type CommandContext, flag, type ParsedArgs, str, strs, throttled, wholeNumber } from './command.js';
import { bytes, count, percent, tagList } from './format.js';

/**
 * `osfarm pull --lazy URL`: serves the image over NBD at once, fetches and publishes it in
 * the background, and keeps serving until Ctrl-C (or, with --until-complete, until the image
 * is published): NBD clients may still be reading.
 */
export async function pullLazyCommand(url: string, args: ParsedArgs, ctx: CommandContext, maxRequestBytes: number | undefined): Promise<LazyPullResult> {
  const bar = ctx.progress('lazy pull');
  const progressEvent = throttled((e: { type: string }) => ctx.event(e));
  const exp = await pullLazy(url, {
    repo: ctx.repoPath,
    name: str(args, 'name'),
    socket: str(args, 'socket'),
    exportName: str(args, 'export'),
    parallel: wholeNumber(args, 'parallel', 1, 64),
    maxRequestBytes,
    retries: wholeNumber(args, 'retries', 0, 100),
    trust: strs(args, 'trust'),
    prefetch: !flag(args, 'no-prefetch'),
    recordProfile: flag(args, 'record-profile'),
    signal: ctx.signal,
    onEvent: (e) => {
      switch (e.type) {
        case 'result':
          return; // printed once, last
        case 'progress':
          bar.update(e.done, e.total, `blocks, ${bytes(e.bytesFetched)} fetched in ${count(e.requests)} requests`);
          return progressEvent(e);
        case 'ready':
          ctx.info(`serving ${e.uri}\n  qemu: -drive file=${e.uri},format=raw,snapshot=on   (or qemu-nbd/nbd-client on ${e.socket})`);
          break;
        case 'stalled':
          ctx.info(`waiting for the origin (${e.message}); trying again in ${e.retryInMs / 1000} s`);
          break;
        default:
          ctx.info(`${e.type}: ${e.message}`);
      }
      ctx.event(e);
    },
  });
  try {
    const result = await exp.completed;
    bar.done();
    if (!flag(args, 'until-complete') && !ctx.signal.aborted) {
      ctx.info(`image ${result.digest} is complete and published; still serving ${exp.uri} until Ctrl-C`);
      ctx.event({ type: 'published', digest: result.digest, name: result.name });
      await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
    }
    return result;
  } finally {
    bar.done();
    await exp.close();
  }
}

export function renderLazy(r: LazyPullResult): string {
  const share = r.blockCount ? r.blocksFetched / r.blockCount : 0;
  return [
    `image      ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''}, ${bytes(r.size)} in ${count(r.blockCount)} blocks, published`,
    `fetched    ${count(r.blocksFetched)} blocks (${percent(share)}), ${bytes(r.bytesFetched)} in ${count(r.requests)} requests${r.retries ? ` (${r.retries} retries)` : ''}`,
    `local      ${count(r.blocksLocal)} blocks from the repository, ${count(r.blocksResumed)} kept from an earlier attempt, ${count(r.blocksZero)} zero`,
    `profile    ${r.profile === 'none' ? 'none (prefetched in block order)' : `from the ${r.profile === 'origin' ? 'origin' : 'local repository'}`}`,
    `time       ${r.seconds.toFixed(2)} s to complete`,
  ].join('\n');
}
