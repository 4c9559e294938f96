/** `osfarm pull`: fetch an image over HTTP, only the blocks the repository lacks. */
import { invalidArgument } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { Repository } from '../../repo/index.js';
import { pull, type PullResult } from '../../transfer/http/pull.js';
import type { LazyPullResult } from '../../transfer/lazy/export.js';
import { type Command, flag, str, strs, throttled, wholeNumber } from '../command.js';
import { pullLazyCommand, renderLazy } from '../pull-lazy.js';
import { bytes, count, percent, tagList } from '../format.js';

/** --max-request: from 4 KiB (one block) to 1 GiB. */
function requestSize(text: string): number {
  const n = parseSize(text, '--max-request');
  if (!(n >= 4096 && n <= 2 ** 30)) throw invalidArgument(`--max-request: '${text}' is not a size from 4K to 1G`);
  return n;
}

const command: Command<PullResult | LazyPullResult> = {
  name: 'pull',
  section: 'transfer',
  summary: 'fetch an image over HTTP, only the blocks the repository lacks (resumable, proxy-friendly)',
  usage: [
    'http://HOST[:PORT][/PREFIX]/images/DIGEST|NAME [--name N] [--parallel N] [--max-request SIZE] [--retries N] [--trust KEYFILE]...',
    '--lazy URL [--socket PATH] [--export NAME] [--until-complete] [--record-profile] [--no-prefetch] [flags]',
  ],
  description:
    'From an osfarm serve, or any static web server or caching proxy in front of a repository (docs/http.md). A missing repository is created with the image\'s hash and block size. With --trust, or a repository that trusts keys (osfarm keys trust), the image\'s signed manifest and index are checked before any block is assembled (docs/trust.md). With --lazy the image is served over NBD at once while it arrives (docs/lazy-boot.md).',
  options: {
    name: { type: 'string', value: 'N', description: 'the one tag the image gets here (default: all the tags it has at the origin)' },
    parallel: { type: 'string', value: 'N', description: 'range requests in flight at once (default 4)' },
    'max-request': { type: 'string', value: 'SIZE', description: 'the largest single range request, like 8M (default)' },
    retries: { type: 'string', value: 'N', description: 'retries of a failed request before giving up' },
    trust: { type: 'string', multiple: true, value: 'KEYFILE', complete: 'file', description: 'require a signature by this public key (minisign format; may be repeated)' },
    lazy: { type: 'boolean', description: 'serve the image over NBD at once, fetching blocks as they are read, and publish it when complete' },
    socket: { type: 'string', value: 'PATH', complete: 'file', description: '--lazy: the Unix socket the NBD server listens on' },
    export: { type: 'string', value: 'NAME', description: '--lazy: the NBD export name' },
    'until-complete': { type: 'boolean', description: '--lazy: stop serving once the image is complete and published (default: serve until Ctrl-C)' },
    'record-profile': { type: 'boolean', description: '--lazy: keep the read order as the image\'s boot profile' },
    'no-prefetch': { type: 'boolean', description: '--lazy: fetch only the blocks that are read (the image is not published)' },
  },
  operands: { complete: 'none', min: 1, max: 1 },
  examples: [
    { command: 'osfarm pull http://build1:8080/images/app1.tar', what: 'fetch app1.tar into the repository, only the blocks it lacks' },
    { command: 'osfarm pull http://cache.example:3128/osfarm/images/3f2a9c0d --parallel 8', what: 'through a caching proxy, eight requests at a time' },
  ],
  async run(args, ctx) {
    const [url] = args.positionals as [string];
    const maxRequest = str(args, 'max-request');
    if (flag(args, 'lazy')) return pullLazyCommand(url, args, ctx, maxRequest === undefined ? undefined : requestSize(maxRequest));
    if (!Repository.exists(ctx.repoPath)) ctx.info(`no repository at ${ctx.repoPath}: creating it with the image's hash and block size`);
    // One bar per phase: copying local blocks, then fetching.
    let phase = '';
    let bar = ctx.progress('pull');
    const progressEvent = throttled((p: object) => ctx.event({ type: 'progress', unit: 'bytes', ...p }));
    try {
      return await pull(url, {
        repo: ctx.repoPath,
        name: str(args, 'name'),
        parallel: wholeNumber(args, 'parallel', 1, 64),
        maxRequestBytes: maxRequest === undefined ? undefined : requestSize(maxRequest),
        retries: wholeNumber(args, 'retries', 0, 100),
        trust: strs(args, 'trust'),
        signal: ctx.signal,
        // The result is printed once, last, by the CLI: only progress is shown as it comes.
        onEvent: (p) => {
          if (p.type !== 'progress') return;
          if (p.phase !== phase) {
            bar.done();
            phase = p.phase;
            ctx.detail(`pull: ${p.phase === 'local' ? 'copying the blocks the repository holds' : 'fetching the missing blocks'}`);
            bar = ctx.progress(p.phase === 'local' ? 'local blocks' : 'fetch');
          }
          bar.update(p.done, p.total, p.phase === 'fetch' ? `${count(p.requests)} requests${p.retries ? `, ${p.retries} retries` : ''}` : '');
          progressEvent(p);
        },
      });
    } finally {
      bar.done();
    }
  },
  render(r) {
    if ('profile' in r) return renderLazy(r);
    if (r.alreadyPresent) return `image ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''} is already in the repository: nothing fetched`;
    const share = r.blockCount ? r.blocksFetched / r.blockCount : 0;
    return [
      `image      ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''}, ${bytes(r.size)} in ${count(r.blockCount)} blocks`,
      ...(r.signedBy ? [`signed     by key ${r.signedBy} (manifest and index verified)`] : []),
      `fetched    ${count(r.blocksFetched)} blocks (${percent(share)}), ${bytes(r.bytesFetched)} in ${count(r.requests)} requests${r.retries ? ` (${r.retries} retries)` : ''}`,
      `local      ${count(r.blocksLocal)} blocks from the repository, ${count(r.blocksResumed)} kept from an earlier attempt, ${count(r.blocksZero)} zero`,
      `time       ${r.seconds.toFixed(2)} s`,
    ].join('\n');
  },
};
export default command;
