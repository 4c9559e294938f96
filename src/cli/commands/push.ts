/** `osfarm push`: send an image to an `osfarm receive`, only the blocks it lacks. */
import { resolveToken } from '../../transfer/push/auth.js';
import { push, type PushResult } from '../../transfer/push/push.js';
import { type Command, flag, str, throttled } from '../command.js';
import { bytes, count, percent, tagList } from '../format.js';
import { CLIENT_TLS_OPTIONS, clientTls } from '../tls.js';

const command: Command<PushResult> = {
  name: 'push',
  section: 'transfer',
  summary: 'send an image to an osfarm receive, only the blocks it lacks',
  usage: ['IMAGE HOST:PORT [--name N] [--token T | --token-file F] (--tls-fingerprint SHA256 | --tls-ca FILE | --insecure) [--no-compress]'],
  description:
    'IMAGE is an image file, or an image of the repository by name, digest or digest prefix. The receiver tells which blocks it holds; only the others cross the network (docs/protocol.md). An interrupted push resumes where it stopped. Without TLS it refuses to start unless told --insecure (docs/trust.md).',
  options: {
    name: { type: 'string', value: 'N', description: 'the one tag the image gets in the receiver\'s repository (default: all the tags it has here)' },
    token: { type: 'string', value: 'T', description: 'the shared token (default $OSFARM_TOKEN); prefer --token-file, a token on the command line shows in ps' },
    'token-file': { type: 'string', value: 'F', complete: 'file', description: 'read the shared token from F' },
    ...CLIENT_TLS_OPTIONS,
    insecure: { type: 'boolean', description: 'push without TLS (the image in clear), and without a token to a receiver that runs without one (a trusted network only)' },
    'no-compress': { type: 'boolean', description: 'send blocks uncompressed (default: zstd where it helps)' },
  },
  operands: { complete: 'file', min: 2, max: 2 },
  examples: [
    { command: 'osfarm push app1.tar build2:7070 --token-file ~/.osfarm-token --tls-ca ca.pem', what: 'send app1.tar (a file, or the repository image of that name) over TLS to the receiver on build2, whose certificate ca.pem signed' },
    { command: 'osfarm --json push 3f2a9c0d 127.0.0.1:7070 --insecure | jq -c "select(.type == \\"progress\\")"', what: 'follow a push to a local receiver by its progress events' },
  ],
  async run(args, ctx) {
    const [image, address] = args.positionals as [string, string];
    const tls = clientTls(args, 'push');
    const token = resolveToken({ token: str(args, 'token'), tokenFile: str(args, 'token-file') });
    const bar = ctx.progress('push', 'items');
    const progressEvent = throttled((p: object) => ctx.event({ type: 'progress', ...p }));
    try {
      return await push(image, address, {
        token,
        insecure: flag(args, 'insecure'),
        tls,
        name: str(args, 'name'),
        repo: ctx.repoPath,
        compress: !flag(args, 'no-compress'),
        signal: ctx.signal,
        // The result is printed once, last, by the CLI: only progress is shown as it comes.
        onEvent: (e) => {
          if (e.type !== 'progress') return;
          bar.update(e.done, e.total, `blocks; sent ${count(e.blocksSent)}, ${bytes(e.wireBytesSent)} on the wire`);
          progressEvent({ ...e, phase: 'push', unit: 'blocks' });
        },
      });
    } finally {
      bar.done();
    }
  },
  render(r) {
    if (r.alreadyPresent) return `image ${r.digest} is already in the receiver's repository: nothing sent`;
    const share = r.blockCount ? r.blocksSent / r.blockCount : 0;
    return [
      `image      ${r.digest}${r.tags?.length ? ` (${tagList(r.tags)})` : ''}, ${bytes(r.size)} in ${count(r.blockCount)} blocks`,
      `sent       ${count(r.blocksSent)} blocks (${percent(share)}), ${bytes(r.rawBytesSent)} of data as ${bytes(r.encodedBytesSent)}; ${bytes(r.wireBytesSent)} on the wire`,
      `receiver   ${count(r.localBlocks)} blocks from its repository, ${count(r.resumedBlocks)} kept from an earlier attempt, ${count(r.duplicateBlocks)} repeats, ${count(r.zeroBlocks)} zero`,
      `time       ${r.seconds.toFixed(2)} s, ${bytes(r.size / Math.max(r.seconds, 1e-9))}/s observed, ${bytes(r.wireBytesSent / Math.max(r.seconds, 1e-9))}/s on the wire`,
    ].join('\n');
  },
};
export default command;
