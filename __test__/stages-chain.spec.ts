/**
 * Stage chains without building: specs with parents (files, inline, XML), the tag of each
 * stage changing exactly when its tree would, and the XML export reading back to the same
 * request checksum.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';

import { canonicalSpec, loadSpec, parseSpec, specDigest, specFromObject, type BuildSpec } from '../src/spec/index.js';
import { specToXml } from '../src/spec/xml.js';
import { type ChainContext, planStages, specChain } from '../src/builder/plan.js';
import { cliJson, tempDir } from './helpers/tmp.js';
import { localArchive } from './helpers/apt-archive.js';

const CTX: ChainContext = { driver: 'mmdebstrap', driverVersion: 'mmdebstrap 1.3.5; osfarm 0.1.0', osfarmVersion: '0.1.0', sourceDateEpoch: null, hostSources: 'host-sources-1' };

const core = { name: 'core', distribution: 'debian', release: 'bookworm', architecture: 'amd64', groups: ['minbase'] };
const base = { name: 'base', parent: core, packages: ['less', 'vim-tiny'] };
const app = (extra: Record<string, unknown> = {}) => ({ name: 'app', parent: base, packages: ['jq'], ...extra });

const tags = (spec: BuildSpec, ctx: Partial<ChainContext> = {}) => planStages(spec, { ...CTX, ...ctx }).map((p) => p.tag);

test('a spec with a parent inherits settings, keeps its own packages, and chains core → base → appliance', (t) => {
  const s = specFromObject({ ...app(), hostname: 'app1' });
  t.deepEqual(specChain(s).map((x) => x.name), ['core', 'base', 'app']);
  t.deepEqual(s.packages, ['jq'], 'its own packages only: the parent’s are in the parent’s stage');
  t.is(s.release, 'bookworm');
  t.is(s.hostname, 'app1');
  t.is(s.parent!.hostname, 'localhost');
  const plans = planStages(s, CTX);
  t.deepEqual(plans.map((p) => p.step), ['bootstrap', 'install', 'install']);
  t.is(plans[0]!.parentTag, null);
  t.is(plans[1]!.parentTag, plans[0]!.tag);
  t.is(plans[2]!.parentTag, plans[1]!.tag);
  t.is(new Set(plans.map((p) => p.tag)).size, 3);
});

test('a parent cannot be changed under it: release, mirrors and variants are refused by field', (t) => {
  const err = t.throws(() => specFromObject({ ...app(), release: 'trixie', mirrors: ['http://mirror.invalid/debian'], groups: ['buildd'] }));
  const paths = (err as unknown as { issues: { path: string }[] }).issues.map((i) => i.path);
  t.deepEqual(paths.sort(), ['spec.groups[0]', 'spec.mirrors', 'spec.release']);
  const bad = t.throws(() => specFromObject({ name: 'x', parent: { ...core, release: 'no such release!' } }));
  t.regex(bad!.message, /spec\.parent\.release/);
  t.throws(() => specFromObject({ name: 'x', parent: 42 }), { message: /spec\.parent: must be/ });
  t.throws(() => specFromObject({ name: 'x', parent: 'nowhere/base' }), { message: /neither a spec file/ });
});

test('parents as files, by name without an ending, as XML with a nested <parent>; loops are refused', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'core.yaml'), 'distribution: debian\nrelease: bookworm\narchitecture: amd64\ngroups: [minbase]\nname: core\n');
  writeFileSync(join(dir, 'base.json'), JSON.stringify({ name: 'base', parent: 'core', packages: ['less', 'vim-tiny'] }));
  writeFileSync(join(dir, 'app.xml'), '<image><name>app</name><parent>base.json</parent><packages><package>jq</package></packages></image>');
  const fromFiles = loadSpec(join(dir, 'app.xml'));
  t.is(specDigest(fromFiles), specDigest(specFromObject(app())), 'files and inline specs give the same request checksum');
  const nested = parseSpec(`<image><name>app</name><packages><package>jq</package></packages>
    <parent><name>base</name><packages><package>less</package><package>vim-tiny</package></packages>
      <parent><name>core</name><distribution>debian</distribution><release>bookworm</release><architecture>amd64</architecture><groups><group>minbase</group></groups></parent>
    </parent></image>`);
  t.is(specDigest(nested), specDigest(fromFiles));
  writeFileSync(join(dir, 'a.yaml'), 'parent: b.yaml\n');
  writeFileSync(join(dir, 'b.yaml'), 'parent: a.yaml\n');
  t.throws(() => loadSpec(join(dir, 'a.yaml')), { message: /parent chain loops/ });
  // A name that is no file goes to the resolver (the repository's images in the CLI).
  writeFileSync(join(dir, 'app2.yaml'), 'name: app\nparent: base-image\npackages: [jq]\n');
  const asked: string[] = [];
  const viaResolver = loadSpec(join(dir, 'app2.yaml'), { resolveParent: (ref) => (asked.push(ref), ref === 'base-image' ? { raw: base } : undefined) });
  t.deepEqual(asked, ['base-image']);
  t.is(specDigest(viaResolver), specDigest(fromFiles));
});

test('tags change when and only when the tree would change', (t) => {
  const [c0, b0, a0] = tags(specFromObject(app()));
  // Nothing that changes a tree: the same tags.
  t.deepEqual(tags(specFromObject({ ...app(), name: 'renamed', outputs: ['ext4', 'squashfs'] })), [c0, b0, a0], 'name and formats');
  t.deepEqual(tags(specFromObject({ ...app(), packages: ['jq', 'jq'], parent: { ...base, packages: ['vim-tiny', 'less'] } })), [c0, b0, a0], 'package order and duplicates');
  t.deepEqual(tags(specFromObject(app()), { hostSources: 'host-sources-1' }), [c0, b0, a0]);
  // A package added to the appliance: only its stage.
  const [c1, b1, a1] = tags(specFromObject(app({ packages: ['jq', 'curl'] })));
  t.is(c1, c0);
  t.is(b1, b0);
  t.not(a1, a0);
  // A package added to the base: base and appliance, not the core.
  const [c2, b2, a2] = tags(specFromObject({ ...app(), parent: { ...base, packages: ['less', 'vim-tiny', 'file'] } }));
  t.is(c2, c0);
  t.not(b2, b0);
  t.not(a2, a0);
  // The mirror (package source): every stage.
  const mirrored = specFromObject({ ...app(), parent: { ...base, parent: { ...core, mirrors: ['http://mirror.invalid/debian'] } } });
  for (const [i, tag] of tags(mirrored).entries()) t.not(tag, [c0, b0, a0][i]);
  // The host's apt sources stand for the package source when the spec names no mirror.
  t.not(tags(specFromObject(app()), { hostSources: 'host-sources-2' })[0], c0);
  t.is(tags(mirrored, { hostSources: 'host-sources-2' })[0], tags(mirrored)[0], 'with a mirror, the host sources do not matter');
  // A different parent: the appliance's tag follows, though its own config is the same.
  const otherBase = specFromObject({ ...app(), parent: { ...base, hostname: 'elsewhere' } });
  const [c3, b3, a3] = tags(otherBase);
  t.is(c3, c0);
  t.not(b3, b0);
  t.not(a3, a0);
  // The driver's version, and SOURCE_DATE_EPOCH (file times are clamped to it).
  t.not(tags(specFromObject(app()), { driverVersion: 'mmdebstrap 1.4.0; osfarm 0.1.0' })[0], c0);
  t.deepEqual(tags(specFromObject(app()), { osfarmVersion: '0.2.0' }).slice(0, 1), [c0], 'the core names osfarm in its driverVersion; only stages above it take osfarmVersion');
  t.notDeepEqual(tags(specFromObject(app()), { osfarmVersion: '0.2.0' }).slice(1), [b0, a0]);
  for (const [i, tag] of tags(specFromObject(app()), { sourceDateEpoch: 1700000000 }).entries()) t.not(tag, [c0, b0, a0][i]);
  // Settings, files and commands of a stage change that stage.
  t.not(tags(specFromObject(app({ timezone: 'Europe/Zurich' })))[2], a0);
  t.not(tags(specFromObject(app({ commands: ['touch /x'] })))[2], a0);
  t.not(tags(specFromObject(app({ files: [{ destination: '/etc/motd', content: 'hi\n' }] })))[2], a0);
});

test('a file enters the tag by its content, not its path on the host', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'one'), 'same bytes\n');
  writeFileSync(join(dir, 'two'), 'same bytes\n');
  writeFileSync(join(dir, 'three'), 'other bytes\n');
  const withFile = (src: string) => tags(specFromObject(app({ files: [{ destination: '/etc/motd', source: join(dir, src) }] })))[2];
  t.is(withFile('one'), withFile('two'));
  t.not(withFile('one'), withFile('three'));
});

test('the spec as XML reads back to the same request checksum (parents, CDATA contents, commands, password hash)', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'motd'), 'from a file\n');
  const spec = specFromObject({
    ...app(),
    rootPassword: 'secret & <pass>',
    files: [
      { destination: '/etc/issue', content: '  leading space, trailing newlines\n\n\t"quotes" & <tags> ]]> end\n' },
      { destination: '/etc/empty', content: '' },
      { destination: '/etc/motd', source: join(dir, 'motd'), mode: '0600' },
    ],
    commands: ['echo "a <b> & c" > /tmp/x', '  printf "%s\\n" ]]>  '],
    sourceDateEpoch: 1700000000,
    parent: { ...base, timezone: 'Europe/Zurich', parent: { ...core, gpgCheck: false, components: ['main', 'contrib'] } },
  });
  const xml = specToXml(spec);
  t.notRegex(xml, /secret/, 'only the hash is written');
  const back = parseSpec(xml);
  t.deepEqual(canonicalSpec(back), canonicalSpec(spec));
  t.is(specDigest(back), specDigest(spec));
  t.is(specDigest(parseSpec(specToXml(back))), specDigest(spec), 'and again');
});

// A build refuses a non-root user before it looks at the stage store: this one needs root (the full suite).
const asRoot = process.getuid?.() === 0 ? test : test.skip;

asRoot('--cow picks the backend; one that cannot work where the store is, or an unknown one, is refused before anything is built', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'core.yaml'), 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
  const args = (cow: string) => ['--repo', join(dir, 'repo'), 'build', join(dir, 'core.yaml'), '-d', join(dir, 'work'), '--stages', join(dir, 'stages'), '--cow', cow];
  const unknown = cliJson(args('zfs'));
  t.is(unknown.status, 2);
  t.is(unknown.result.error.code, 'OSFARM_INVALID_ARGUMENT');
  t.regex(unknown.result.error.message, /--cow "zfs" is not one of auto, btrfs, overlayfs, reflink, lvm-thin, copy/);
  // The temp directory is not on btrfs (nor is there device-mapper): say what the backend needs.
  for (const cow of ['btrfs', 'lvm-thin']) {
    const r = cliJson(args(cow));
    t.is(r.status, 1);
    t.is(r.result.error.code, 'OSFARM_STAGE');
    t.regex(r.result.error.message, new RegExp(`the ${cow} backend cannot work for the stage store`));
  }
  t.deepEqual(readdirSync(join(dir, 'stages')).filter((n) => /^[0-9a-f]{64}$/.test(n)), [], 'no stage was made');
});

test('a mirror given on the command line or in $OSFARM_MIRROR is the whole chain\'s package source', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'core.yaml'), 'name: core\ndistribution: debian\nrelease: bookworm\ngroups: [minbase]\n');
  writeFileSync(join(dir, 'app.yaml'), 'name: app\nparent: core\npackages: [jq]\n');
  // --check looks the packages up in the mirror's own index: a local archive that has jq.
  const mirror = localArchive(join(dir, 'mirror'), ['jq']);
  const check = (args: string[], env: NodeJS.ProcessEnv = {}) => cliJson(['build', '--check', join(dir, 'app.yaml'), '-d', join(dir, 'work'), ...args], { OSFARM_MIRROR: '', ...env });
  const plain = check([]);
  t.is(plain.status, 0, JSON.stringify(plain.result));
  const flagged = check(['--mirror', mirror, '--no-gpg-check']);
  t.is(flagged.status, 0, JSON.stringify(flagged.result));
  t.deepEqual(flagged.result.spec.parent.mirrors, [mirror]);
  t.false(flagged.result.spec.parent.gpgCheck);
  t.not(flagged.result.specDigest, plain.result.specDigest);
  t.regex(flagged.result.packageIndex, new RegExp(`apt index of ${mirror}`));
  const fromEnv = check(['--no-gpg-check'], { OSFARM_MIRROR: mirror });
  t.is(fromEnv.status, 0, JSON.stringify(fromEnv.result));
  t.deepEqual(fromEnv.result.spec.parent.mirrors, [mirror]);
  // A mirror that cannot serve the release: refused, blamed on the core's mirrors.
  const bad = check(['--mirror', 'http://mirror-a.invalid/debian', '--no-gpg-check']);
  t.is(bad.status, 1);
  t.regex(bad.result.error.message, /^spec\.parent\.mirrors: no package index of debian bookworm \(amd64\) from http:\/\/mirror-a\.invalid\/debian: /);
});
