// A child process for the repository's crash and concurrency tests.
//   node --import tsx repo-child.ts add <repo> <image> [name] [killAt] [killDelayMs]
//   node --import tsx repo-child.ts remove <repo> <ref>
// prints "progress <done> <total>" lines while it copies, then "done <digest>".
// $OSFARM_CRASH_AT makes the native code SIGKILL the process at a named point of a commit.
// With killAt (a fraction 0..1), it SIGKILLs itself once the add's progress reaches that
// fraction (after killDelayMs more milliseconds if given): a real, uncatchable kill at a
// chosen moment, without depending on how fast a parent reads the progress lines.
import { Repository } from '../../src/repo/index.js';

const [cmd, repoPath, image, name, killAt, killDelayMs] = process.argv.slice(2);
if (!['add', 'remove'].includes(cmd ?? '') || !repoPath || !image) {
  process.stderr.write('usage: repo-child.ts add <repo> <image> [name] [killAt] [killDelayMs] | remove <repo> <ref>\n');
  process.exit(2);
}
if (cmd === 'remove') {
  const removed = await Repository.open(repoPath).remove(image);
  process.stdout.write(`done ${removed.digest}\n`);
  process.exit(0);
}
const threshold = killAt === undefined ? undefined : Number(killAt);
let armed = threshold !== undefined;
const die = () => process.kill(process.pid, 'SIGKILL');
const repo = Repository.open(repoPath);
const entry = await repo.add(image, {
  name: name || undefined,
  meta: { child: process.pid },
  onProgress: (e) => {
    process.stdout.write(`progress ${e.done} ${e.total}\n`);
    if (armed && e.total > 0 && e.done >= e.total * threshold!) {
      armed = false;
      const delay = Number(killDelayMs ?? 0);
      if (delay > 0) setTimeout(die, delay);
      else die();
    }
  },
});
process.stdout.write(`done ${entry.digest}\n`);
