import { resolve } from 'node:path';

import { defaultWorkDir } from '../../base/env.js';
import { invalidArgument } from '../../base/errors.js';
import { FarmWorker, type WorkerSummary } from '../../farm/worker.js';
import { resolveToken } from '../../transfer/push/auth.js';
import { parseAddress } from '../../transfer/address.js';
import { type Command, flag, str, wholeNumber } from '../command.js';
import { CLIENT_TLS_OPTIONS, clientTls } from '../tls.js';

const command: Command<WorkerSummary> = {
  name: 'worker',
  usage:
    'worker --queue redis://host:port --push-to <host:port> [--token T | --token-file F | $OSFARM_TOKEN]\n' +
    '       (--tls-fingerprint SHA256 | --tls-ca FILE | --insecure)\n' +
    '       [--id NAME] [-d|--work-dir DIR] [--stages DIR] [--lock-ms N]\n' +
    '(builds the farm\'s jobs in its own work directory and stage cache, pushes each image to the central repository\'s osfarm receive; see docs/farm.md)',
  options: {
    queue: { type: 'string' },
    'push-to': { type: 'string' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    ...CLIENT_TLS_OPTIONS,
    id: { type: 'string' },
    'work-dir': { type: 'string', short: 'd' },
    stages: { type: 'string' },
    'lock-ms': { type: 'string' },
  },
  async run(args, ctx) {
    const queue = str(args, 'queue');
    const pushTo = str(args, 'push-to');
    if (!queue || !pushTo) throw invalidArgument('worker needs --queue redis://host:port (the farm\'s Redis) and --push-to host:port (the central repository\'s osfarm receive)');
    parseAddress(pushTo);
    // The same rules as push: TLS to the receiver, or plain TCP asked for with --insecure.
    const tls = clientTls(args, 'worker');
    const token = resolveToken({ token: str(args, 'token'), tokenFile: str(args, 'token-file') });
    if (!token && !flag(args, 'insecure')) throw invalidArgument('give the receiver\'s token (--token, --token-file or $OSFARM_TOKEN), or --insecure for a receiver without one');
    const workDir = resolve(str(args, 'work-dir') ?? defaultWorkDir());
    const worker = new FarmWorker({
      url: queue,
      pushTo,
      ...(token ? { token } : {}),
      insecure: flag(args, 'insecure'),
      ...(tls ? { tls } : {}),
      workDir,
      ...(str(args, 'stages') ? { stages: resolve(str(args, 'stages')!) } : {}),
      ...(str(args, 'id') ? { id: str(args, 'id')! } : {}),
      lockMs: wholeNumber(args, 'lock-ms', 100, 3_600_000),
      onEvent: (e) => {
        ctx.event({ ...e, event: e.type }); // the CLI's NDJSON lines are keyed by `event`
        if (e.type === 'ready') ctx.info(`worker ${e.id}: taking jobs from ${queue} (${e.stages} cached stages in ${workDir}), pushing to ${pushTo}`);
        else if (e.type === 'job-start') ctx.info(`job ${e.job}: started (attempt ${e.attempt}, from ${e.queue})`);
        else if (e.type === 'job-end') ctx.info(`job ${e.job}: ${e.state} in ${(e.ms / 1000).toFixed(1)} s`);
        else ctx.info(`worker: ${e.message}`);
      },
    });
    await worker.start();
    await new Promise<void>((done) => {
      if (ctx.signal.aborted) done();
      ctx.signal.addEventListener('abort', () => done(), { once: true });
    });
    await worker.stop();
    // With Redis gone, BullMQ's connections keep retrying and would keep the process alive.
    setTimeout(() => process.exit(0), 2000).unref();
    return worker.summary;
  },
  render(r) {
    return `worker ${r.id} stopped after ${r.jobs} job(s): ${r.succeeded} succeeded, ${r.failed} failed`;
  },
};
export default command;
