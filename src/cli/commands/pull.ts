import { invalidArgument } from '../../base/errors.js';
import { pull, type PullResult } from '../../transfer/http/pull.js';
import type { LazyPullResult } from '../../transfer/lazy/export.js';
import { type Command, flag, str, strs, throttled, wholeNumber } from '../command.js';
import { pullLazyCommand, renderLazy } from './pull-lazy.js';
import { parseSize } from '../../base/size.js';
import { bytes, count, percent } from '../format.js';

/** --max-request: from 4 KiB (one block) to 1 GiB. */
function requestSize(text: string): number {
  const n = parseSize(text, '--max-request');
  if (!(n >= 4096 && n <= 2 ** 30)) throw invalidArgument(`--max-request: '${text}' is not a size from 4K to 1G`);
  return n;
}

const command: Command<PullResult | LazyPullResult> = {
  name: 'pull',
  usage: [
    'pull <http://HOST[:PORT][/PREFIX]/images/<digest or name>> [--repo DIR] [--name N] [--parallel N] [--max-request SIZE] [--retries N] [--trust KEYFILE]...',
    'pull --lazy <URL> [--socket PATH] [--export NAME] [--until-complete] [--record-profile] [--no-prefetch] [--name N] [--parallel N] [--max-request SIZE] [--retries N] [--trust KEYFILE]...',
  ].join('\n'),
  options: {
    lazy: { type: 'boolean' },
    socket: { type: 'string' },
    export: { type: 'string' },
    'until-complete': { type: 'boolean' },
    'record-profile': { type: 'boolean' },
    'no-prefetch': { type: 'boolean' },
    name: { type: 'string' },
    parallel: { type: 'string' },
    'max-request': { type: 'string' },
    retries: { type: 'string' },
    trust: { type: 'string', multiple: true },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const [url, extra] = args.positionals;
    if (!url || extra) throw invalidArgument('pull takes one URL: http://HOST[:PORT]/images/<digest or name>');
    const maxRequest = str(args, 'max-request');
    if (flag(args, 'lazy')) return pullLazyCommand(url, args, ctx, maxRequest === undefined ? undefined : requestSize(maxRequest));
    // One bar per phase: copying local blocks, then fetching.
    let phase = '';
    let bar = ctx.progress('pull');
    const progressEvent = throttled((p: object) => ctx.event({ event: 'progress', ...p }));
    try {
      return await pull(url, {
        repo: ctx.repoPath,
        name: str(args, 'name'),
        parallel: wholeNumber(args, 'parallel', 1, 64),
        maxRequestBytes: maxRequest === undefined ? undefined : requestSize(maxRequest),
        retries: wholeNumber(args, 'retries', 0, 100),
        trust: strs(args, 'trust'),
        signal: ctx.signal,
        onProgress: (p) => {
          if (p.phase !== phase) {
            bar.done();
            phase = p.phase;
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
    if (r.alreadyPresent) return `image ${r.digest}${r.name ? ` (${r.name})` : ''} is already in the repository: nothing fetched`;
    const share = r.blockCount ? r.blocksFetched / r.blockCount : 0;
    return [
      `image      ${r.digest}${r.name ? ` (${r.name})` : ''}, ${bytes(r.size)} in ${count(r.blockCount)} blocks`,
      ...(r.signedBy ? [`signed     by key ${r.signedBy} (manifest and index verified)`] : []),
      `fetched    ${count(r.blocksFetched)} blocks (${percent(share)}), ${bytes(r.bytesFetched)} in ${count(r.requests)} requests${r.retries ? ` (${r.retries} retries)` : ''}`,
      `local      ${count(r.blocksLocal)} blocks from the repository, ${count(r.blocksResumed)} kept from an earlier attempt, ${count(r.blocksZero)} zero`,
      `time       ${r.seconds.toFixed(2)} s`,
    ].join('\n');
  },
};
export default command;
