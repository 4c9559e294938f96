// The build spec: parsing (YAML, JSON, XML), validation naming the field, canonical form and
// digest, root password hashing, targets. Fast: nothing is built here.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import {
  canonicalJson,
  canonicalSpec,
  loadSpec,
  parseSpec,
  parseTarget,
  specDigest,
  specFromObject,
  stableStringify,
} from '../src/spec/index.js';
import { SpecError } from '../src/spec/errors.js';
import { issuesOf } from './helpers/spec.js';
import { cli, lastOutcome, tempDir } from './helpers/tmp.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'build');
const PASSWORD = 'osfarm-Pl41n-S3cret';

test('YAML, JSON and XML forms of one spec give one canonical spec and digest', (t) => {
  const specs = ['yaml', 'json', 'xml'].map((f) => loadSpec(join(FIXTURES, `minbase.${f}`)));
  const digests = specs.map(specDigest);
  t.is(new Set(digests).size, 1);
  t.deepEqual(canonicalSpec(specs[0]!), canonicalSpec(specs[2]!));
  t.is(specs[0]!.files[1]!.content, 'built by osfarm\n');
  t.true(specs[0]!.files[0]!.source!.endsWith('fixtures/build/files/motd'));
});

test('defaults are filled and order-free lists do not change the digest', (t) => {
  const a = parseSpec('distribution: debian\nrelease: bookworm\narchitecture: amd64\npackages: [zsh, less, zsh]\ngroups: [ssh-server, minbase]\n', 'yaml');
  const b = parseSpec('{"packages":["less","zsh"],"release":"bookworm","groups":["minbase","ssh-server"],"architecture":"x86_64","distribution":"Debian"}', 'json');
  t.is(specDigest(a), specDigest(b));
  const c = canonicalSpec(a);
  t.deepEqual(c.packages, ['less', 'zsh']);
  t.is(c.name, 'debian-bookworm-amd64');
  t.is(c.hostname, 'localhost');
  t.is(c.locale, 'C.UTF-8');
  t.is(c.timezone, 'Etc/UTC');
  t.deepEqual(c.outputs, ['tar']);
  t.deepEqual(c.components, ['main']);
  t.is(c.rootPasswordHash, null);
  t.is(c.specVersion, 1);
  // Keys sorted at every level.
  const json = canonicalJson(a);
  t.is(json, stableStringify(JSON.parse(json)));
  t.deepEqual(Object.keys(JSON.parse(json)), Object.keys(JSON.parse(json)).sort());
  // A changed command, file content or output changes the digest.
  const d = parseSpec('distribution: debian\nrelease: bookworm\narchitecture: amd64\npackages: [zsh, less]\ngroups: [minbase, ssh-server]\ncommands: ["true"]\n', 'yaml');
  t.not(specDigest(d), specDigest(a));
});

test('file contents, not their paths, enter the digest', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'a'), 'same\n');
  writeFileSync(join(dir, 'b'), 'same\n');
  const spec = (src: string) => specFromObject({ distribution: 'debian', release: 'bookworm', architecture: 'amd64', files: [{ source: src, destination: '/etc/x' }] }, { baseDir: dir });
  t.is(specDigest(spec('a')), specDigest(spec('b')));
  writeFileSync(join(dir, 'b'), 'other\n');
  t.not(specDigest(spec('a')), specDigest(spec('b')));
});

test('invalid specs are refused with errors that name the field', (t) => {
  const base = { distribution: 'debian', release: 'bookworm', architecture: 'amd64' };
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ ...base, packages: ['less', 'zsh', 'Not A Package'] }, 'spec.packages[2]', /Debian package name/],
    [{ ...base, pakages: ['less'] }, 'spec.pakages', /did you mean packages/],
    [{ distribution: 'debian' }, 'spec.release', /required/],
    [{ ...base, distribution: 'debain' }, 'spec.distribution', /"debain" is not a distribution osfarm builds \(did you mean debian\?\)/],
    [{ ...base, architecture: 'sparc' }, 'spec.architecture', /not an architecture osfarm builds: one of amd64/],
    [{ ...base, architecture: 'amd46' }, 'spec.architecture', /did you mean amd64\?/],
    [{ ...base, groups: ['minbase', 'standard'] }, 'spec.groups[1]', /second variant/],
    [{ ...base, groups: ['no-such-group'] }, 'spec.groups[0]', /not a group of debian/],
    [{ ...base, files: [{ source: '/etc/hostname' }] }, 'spec.files[0].destination', /required/],
    [{ ...base, files: [{ content: 'x', destination: 'etc/x' }] }, 'spec.files[0].destination', /absolute/],
    [{ ...base, files: [{ content: 'x', destination: '/etc/../x' }] }, 'spec.files[0].destination', /\.\./],
    [{ ...base, files: [{ content: 'x', destination: '/x', mode: 644 }] }, 'spec.files[0].mode', /quoted octal/],
    [{ ...base, files: [{ source: '/no/such/file', destination: '/x' }] }, 'spec.files[0].source', /cannot be read/],
    [{ ...base, hostname: 'bad_host!' }, 'spec.hostname', /host name/],
    [{ ...base, outputs: ['tar', 'vmdk'] }, 'spec.outputs[1]', /not an output format/],
    [{ ...base, rootPassword: 'a', rootPasswordHash: '$6$x$y' }, 'spec.rootPassword', /not both/],
    [{ ...base, rootPasswordHash: 'plain' }, 'spec.rootPasswordHash', /crypt/],
    [{ ...base, commands: ['ok', 42] }, 'spec.commands[1]', /shell command/],
    [{ ...base, mirrors: ['not a url'] }, 'spec.mirrors[0]', /mirror URL/],
    [{ ...base, backend: 'dnf' }, 'spec.backend', /cannot build debian/],
    [{ ...base, sourceDateEpoch: -1 }, 'spec.sourceDateEpoch', /whole number/],
    [{ ...base, distribution: 'fedora', release: '40', packages: ['bash', '-rf'] }, 'spec.packages[1]', /RPM package name/],
  ];
  for (const [raw, path, re] of cases) {
    const issues = issuesOf(() => specFromObject(raw));
    const hit = issues.find((i) => i.path === path);
    t.truthy(hit, `${JSON.stringify(raw)} → ${JSON.stringify(issues)}`);
    if (hit) t.regex(hit.message, re);
  }
  // Every problem at once, and the error carries the code.
  const err = t.throws(() => specFromObject({ ...base, packages: ['A'], hostname: '-x' }), { instanceOf: SpecError });
  t.is(err!.code, 'OSFARM_BAD_SPEC');
  t.regex(err!.message, /spec\.packages\[0\][\s\S]*spec\.hostname/);
});

test('syntax errors in YAML, JSON and XML are spec errors', (t) => {
  t.regex(issuesOf(() => parseSpec('distribution: [debian\n', 'yaml'))[0]!.message, /not valid YAML/);
  t.regex(issuesOf(() => parseSpec('{"distribution": ', 'json'))[0]!.message, /not valid JSON/);
  t.regex(issuesOf(() => parseSpec('<image><release>x</image>', 'xml'))[0]!.message, /not valid XML/);
  t.regex(issuesOf(() => parseSpec('<config><release>x</release></config>', 'xml'))[0]!.message, /root element must be <image>/);
  t.is(issuesOf(() => parseSpec('<image><distribution>debian</distribution><release>bookworm</release><packages><pkg>x</pkg></packages></image>', 'xml'))[0]!.path, 'spec.packages');
});

test('hostile spec text is a spec error, not an internal one: XML external entities, YAML alias bombs, a 30 MB file', (t) => {
  const xxe = '<?xml version="1.0"?>\n<!DOCTYPE image [ <!ENTITY x SYSTEM "file:///etc/passwd"> ]>\n<image><name>&x;</name></image>';
  t.regex(issuesOf(() => parseSpec(xxe, 'xml'))[0]!.message, /not valid XML: External entities/);
  const lol = Array.from({ length: 9 }, (_, i) => (i === 0 ? 'a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]' : `a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(', ')}]`));
  t.regex(issuesOf(() => parseSpec(lol.join('\n'), 'yaml'))[0]!.message, /not valid YAML: Excessive alias count/);

  const dir = tempDir(t);
  const big = join(dir, 'big.yaml');
  writeFileSync(big, `packages:\n${'  - curl\n'.repeat(3_500_000)}`);
  const started = process.hrtime.bigint();
  t.regex(issuesOf(() => loadSpec(big))[0]!.message, /has \d+ bytes; a spec may have at most 1048576/);
  t.regex(issuesOf(() => parseSpec(readFileSync(big, 'utf8'), 'yaml'))[0]!.message, /at most 1048576/);
  // Refused from its size, not after parsing (which took 10 s and 900 MB).
  t.true(Number(process.hrtime.bigint() - started) / 1e9 < 2);
  // The CLI says so with the code, from a file or from a pipe (read in pieces, never whole).
  const r = cli(['build', big]);
  t.not(r.status, 0);
  t.regex(r.stderr, /OSFARM_BAD_SPEC/);
  const piped = spawnSync('bash', ['-c', `{ echo packages:; yes '  - curl'; } | head -c 3000000 | "$0" --import tsx "$1" build /dev/stdin`, process.execPath, join(import.meta.dirname, '..', 'src', 'cli', 'main.ts')], {
    encoding: 'utf8',
  });
  t.not(piped.status, 0);
  t.regex(piped.stderr, /OSFARM_BAD_SPEC.*at most 1048576|at most 1048576.*OSFARM_BAD_SPEC/s);
});

test('a plain root password becomes a SHA-512 crypt hash at once and never travels on', (t) => {
  const raw = { distribution: 'debian', release: 'bookworm', architecture: 'amd64', rootPassword: PASSWORD };
  const spec = specFromObject(raw);
  const hash = spec.rootPasswordHash!;
  t.regex(hash, /^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$/);
  t.false(JSON.stringify(spec).includes(PASSWORD));
  t.false(canonicalJson(spec).includes(PASSWORD));
  t.false('rootPassword' in spec);
  // openssl, given the hash's salt, computes the same hash from the password.
  const salt = hash.split('$')[2]!;
  t.is(execFileSync('openssl', ['passwd', '-6', '-salt', salt, '-stdin'], { input: `${PASSWORD}\n`, encoding: 'utf8' }).trim(), hash);
  // Equal specs give equal hashes (reproducible images); another spec, another salt.
  t.is(specFromObject(raw).rootPasswordHash, hash);
  const other = specFromObject({ ...raw, hostname: 'elsewhere' }).rootPasswordHash!;
  t.not(other.split('$')[2], salt);
  // A given hash is kept as it is.
  t.is(specFromObject({ ...raw, rootPassword: undefined, rootPasswordHash: hash }).rootPasswordHash, hash);
});

test('genfs-style targets', (t) => {
  t.deepEqual(parseTarget('debian-bookworm-amd64'), { distribution: 'debian', release: 'bookworm', architecture: 'amd64' });
  t.deepEqual(parseTarget('centos-stream-9-x86_64'), { distribution: 'centos-stream', release: '9', architecture: 'x86_64' });
  t.deepEqual(parseTarget('ubuntu-noble'), { distribution: 'ubuntu', release: 'noble' });
  t.deepEqual(parseTarget('SL4_x86_64'), { distribution: 'SL', release: '4', architecture: 'x86_64' });
  const sl = specFromObject(parseTarget('SL4_x86_64'));
  t.is(sl.distribution, 'scientific-linux');
  t.is(sl.architecture, 'amd64');
  t.throws(() => parseTarget('debian'), { instanceOf: SpecError });
});

test('CLI: an invalid spec is refused before anything runs, naming the field', (t) => {
  const dir = tempDir(t);
  const specPath = join(dir, 'bad.yaml');
  writeFileSync(specPath, 'distribution: debian\nrelease: bookworm\npackages: [less, zsh, "Bad Name"]\n');
  const work = join(dir, 'work');
  const r = cli(['--json', 'build', specPath, '-d', work, '-o', join(dir, 'out.tar'), '--no-repo']);
  t.is(r.status, 1);
  const last = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.is(last.error.code, 'OSFARM_BAD_SPEC');
  t.regex(last.error.message, /^spec\.packages\[2\]: /);
  t.false(existsSync(work), 'no work directory was created');
  t.false(existsSync(join(dir, 'out.tar.build.log')));
  // genfs flags are checked the same way.
  const r2 = cli(['--json', 'build', '-t', 'debian-bookworm-amd64', '-g', 'minbase,standard', '-d', work, '--no-repo']);
  t.regex(JSON.parse(r2.stdout.trim().split('\n').pop()!).error.message, /spec\.groups\[1\]/);
  // --check validates and prints the canonical spec without building.
  const r3 = cli(['--json', 'build', join(FIXTURES, 'minbase.yaml'), '--check']);
  t.is(r3.status, 0, r3.stderr);
  const ok = lastOutcome(r3.stdout);
  t.is(ok.specDigest, specDigest(loadSpec(join(FIXTURES, 'minbase.yaml'))));
  t.false(r3.stdout.includes(PASSWORD));
  t.false(readFileSync(join(FIXTURES, 'minbase.json'), 'utf8').includes('$6$'));
});
