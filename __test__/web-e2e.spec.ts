/// <reference lib="dom" />
/**
 * The GUI end to end in a real browser (Debian's chromium, driven by playwright-core; no
 * browser is downloaded): log in, compose a Debian minbase image with one extra package
 * found by searching the real package index, build it for real (mmdebstrap) and watch it
 * finish, find it in the repository, compare it with another image, push it to a receiver.
 * A screenshot of each page is kept under __test__/artifacts/web/ (git-ignored).
 */
import { closeSync, copyFileSync, mkdirSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import test from 'ava';
import { chromium, type Browser, type Page } from 'playwright-core';

import { compare } from '../src/blocks/index.js';
import { Repository } from '../src/repo/index.js';
import { Receiver } from '../src/transfer/push/receive.js';
import { serve } from '../src/web/index.js';
import { buildWorkDir } from './fixtures/build/harness.js';
import { pseudoRandom, tempDir } from './helpers/tmp.js';

const ARTIFACTS = join(import.meta.dirname, 'artifacts', 'web');
/** The real-build tests' shared work directory, so the package cache is fetched once. */
const WORK = buildWorkDir();
const CHROMIUM = process.env.OSFARM_CHROMIUM ?? '/usr/bin/chromium';
const BUILD_TIMEOUT_MS = 300_000;

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

test('compose, build for real, find in the repository, compare, push: in a real browser', async (t) => {
  t.timeout(BUILD_TIMEOUT_MS + 120_000);
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = tempDir(t, 'osfarm-web-e2e-');
  const repoPath = join(dir, 'repo');
  // As osfarm serve runs it: the pull endpoints first, then the GUI and API.
  const server = await serve({ repo: repoPath, tokenFile: join(dir, 'token'), workDir: WORK, stages: join(dir, 'stages') });
  t.teardown(() => server.close());
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  let page = await context.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('dialog', (d) => void d.accept());

  // Log in with the token the server created.
  await page.goto(`${server.url}/`);
  await page.waitForSelector('#login');
  await page.fill('#token', 'wrong-token');
  await page.click('#login button');
  await page.waitForSelector('#notice:not([hidden])');
  t.regex(await page.textContent('#notice') ?? '', /OSFARM_UNAUTHORIZED/);
  await shot(page, '0-login');
  await page.fill('#token', server.web.token.value);
  await page.click('#login button');

  // Compose: Debian (this machine's release), minbase, and one package found by searching.
  await page.waitForSelector('#distribution');
  t.is(await page.inputValue('#distribution'), 'debian');
  t.is(await page.textContent('#needs'), '');
  await page.selectOption('#distribution', 'fedora');
  t.regex(await page.textContent('#needs') ?? '', /mirrors/, 'an RPM distribution says it needs its repositories');
  await page.selectOption('#distribution', 'debian');
  t.is(await page.inputValue('#architecture'), 'amd64');
  t.true(await page.isChecked('#groups input[value="minbase"]'));
  // Bootstrap variants are one choice; tasks add up.
  t.is(await page.locator('#variants input[type="radio"]').count(), 10);
  t.true(await page.locator('#tasks input[type="checkbox"]').count() > 0);
  await page.check('#variants input[value="essential"]');
  t.false(await page.isChecked('#groups input[value="minbase"]'));
  await page.check('#variants input[value="minbase"]');
  // A name the package index lacks, typed and added with Enter: marked at once, with the closest names.
  await page.fill('#package-search', 'helo');
  await page.press('#package-search', 'Enter');
  await page.waitForSelector('.chip.unknown[data-package="helo"]');
  t.regex(await page.getAttribute('.chip[data-package="helo"]', 'title') ?? '', /"helo" is not a package of debian .*did you mean[^?]*\bhello\b/);
  t.regex(await page.textContent('#spec-issues') ?? '', /spec\.packages\[0\]/);
  t.true(await page.isDisabled('#build'));
  await page.click('.chip[data-package="helo"] button');
  await page.fill('#package-search', 'hello');
  await page.waitForSelector('[data-package="hello"]');
  t.regex(await page.textContent('#index-info') ?? '', /\d+ packages in debian/);
  await page.click('[data-package="hello"]');
  await page.fill('#name', 'e2e-hello');
  await page.fill('#root-password', 'e2e-secret');
  await page.waitForFunction(() => document.querySelector('#packages')?.textContent?.includes('hello') && document.querySelector('#spec-digest'));
  // Booting: a disk without a kernel is refused naming the field; with the distribution's
  // kernel it is a valid request. (Undone: the build below is the plain minbase.)
  await page.check('#outputs input[value="disk"]');
  await page.waitForSelector('#spec-issues');
  t.regex(await page.textContent('#spec-issues') ?? '', /spec\.outputs: disk output boots the image's own kernel/);
  await page.selectOption('#kernel', 'true');
  await page.check('#network-dhcp');
  await page.fill('#ssh-keys', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJV9F6uFAUmvtpe/QKvdWYeARrw5B1I6kYUQ/B+7plHf e2e@osfarm');
  await page.waitForSelector('#spec-digest');
  await page.uncheck('#outputs input[value="disk"]');
  await page.selectOption('#kernel', '');
  await page.uncheck('#network-dhcp');
  await page.fill('#ssh-keys', '');
  // Wait for the checksum of the final form (the name changes it).
  await page.waitForFunction(async () => {
    const shown = document.querySelector('#spec-digest')?.textContent;
    const r = await fetch('/api/specs/check', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ spec: { distribution: 'debian', release: (document.querySelector('#release') as HTMLSelectElement).value, architecture: 'amd64', groups: ['minbase'], packages: ['hello'], outputs: ['tar'], name: 'e2e-hello', rootPassword: 'e2e-secret' } }) });
    return shown === ((await r.json()) as { specDigest: string }).specDigest;
  });
  t.is(await page.textContent('#built'), 'not built yet');
  await shot(page, '1-compose');

  // Build: the page follows the job live; the build keeps going while we look elsewhere.
  await page.click('#build');
  await page.waitForURL(/#\/build\/[0-9a-f]+$/);
  const jobId = page.url().split('/').pop()!;
  await page.waitForSelector('#phases span.current', { timeout: 60_000 });
  await page.waitForFunction(() => (document.querySelector('#log')?.textContent ?? '').includes('phase bootstrap'), undefined, { timeout: 60_000 });
  await shot(page, '2-build-running');
  // Closing the page does not stop the build: a new page (same browser session) finds it running.
  await page.close();
  t.is((await (await fetch(`${server.url}/api/jobs/${jobId}`, { headers: { authorization: `Bearer ${server.web.token.value}` } })).json() as { state: string }).state, 'running');
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('dialog', (d) => void d.accept());
  await page.goto(`${server.url}/#/repository`);
  await page.waitForSelector('#page-repository');
  await page.goto(`${server.url}/#/build/${jobId}`);
  await page.waitForFunction(() => ['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#job-state')?.textContent ?? ''), undefined, { timeout: BUILD_TIMEOUT_MS });
  const state = await page.textContent('#job-state');
  if (state !== 'succeeded') t.log(await page.textContent('#log'));
  t.is(state, 'succeeded', await page.textContent('#job-error').catch(() => '') ?? '');
  t.is(await page.locator('#phases span.done').count(), 5);
  t.regex(await page.textContent('#log') ?? '', /osfarm: done in/);
  await shot(page, '3-build-done');

  // Repository: the image is there with its spec (JSON and XML) and log.
  const repo = Repository.open(repoPath);
  const built = repo.list().find((i) => i.name === 'e2e-hello.tar');
  t.truthy(built, 'the build added e2e-hello.tar to the repository');
  await page.click('#outputs a');
  await page.waitForSelector('#image-view');
  await page.waitForFunction(() => (document.querySelector('#image-view')?.textContent ?? '').includes('"hello"'));
  t.regex(await page.textContent('#images') ?? '', /e2e-hello\.tar/);
  await page.click('text=spec XML');
  await page.waitForFunction(() => (document.querySelector('#image-view')?.textContent ?? '').includes('<package>hello</package>'));
  await page.click('text=build log');
  await page.waitForFunction(() => (document.querySelector('#image-view')?.textContent ?? '').includes('osfarm: phase index'));
  t.is(await page.getAttribute('#download', 'href'), `/api/images/${built!.digest}/download`);
  t.regex(await page.textContent('#image-stages') ?? '', /core/);
  t.regex((built!.meta as { spec: { rootPasswordHash: string } }).spec.rootPasswordHash, /^\$6\$/, 'the root password went in as a hash');
  // Every package installed in the image with its version, searchable.
  const installed = (built!.meta as { installed: { name: string; version: string }[] }).installed;
  t.true(installed.some((p) => p.name === 'hello'));
  t.is(await page.textContent('#installed h2'), `Installed packages (${installed.length})`);
  t.is(await page.locator('#installed-table tbody tr').count(), installed.length);
  await page.fill('#installed-filter', 'hell');
  const shown = await page.locator('#installed-table tbody tr').allTextContents();
  t.true(shown.length > 0 && shown.length < installed.length && shown.every((r) => r.includes('hell')), shown.join(', '));
  t.true(shown.includes(`hello${installed.find((p) => p.name === 'hello')!.version}`));
  await shot(page, '4-repository');

  // Compose on top of it: the built image is offered as a parent; the child's request is new.
  await page.goto(`${server.url}/#/compose`);
  await page.waitForSelector('#parent option[value="e2e-hello.tar"]', { state: 'attached' });
  await page.selectOption('#parent', 'e2e-hello.tar');
  t.true(await page.isDisabled('#distribution'), "the system is the parent's");
  t.false(await page.isChecked('#groups input[value="minbase"]'), 'a child chooses no bootstrap variant');
  await page.fill('#package-search', 'curl');
  await page.press('#package-search', 'Enter');
  await page.fill('#name', 'e2e-child');
  await page.waitForFunction(() => (document.querySelector('#packages')?.textContent ?? '').includes('curl') && !document.querySelector('#spec-issues'));
  await page.waitForFunction(() => document.querySelector('#built')?.textContent === 'not built yet');
  await shot(page, '4b-compose-child');

  // Another image: the same system with its last quarter rewritten (so about three quarters shared).
  const variantPath = join(dir, 'variant.tar');
  copyFileSync(built!.path, variantPath);
  const size = statSync(variantPath).size;
  const fd = openSync(variantPath, 'r+');
  const from = Math.floor((size * 3) / 4 / 4096) * 4096;
  writeSync(fd, pseudoRandom(size - from, 42), 0, size - from, from);
  closeSync(fd);
  // Its package list as a certifier would see it differ: hello gone, dpkg at another version, one package more.
  const variantInstalled = [...installed.filter((p) => p.name !== 'hello').map((p) => (p.name === 'dpkg' ? { ...p, version: '9.9' } : p)), { name: 'zz-extra', version: '1.0' }];
  const variant = await repo.add(variantPath, { name: 'variant.tar', meta: { installed: variantInstalled } });

  // Compare: numbers as the library computes them, and a chart.
  await page.goto(`${server.url}/#/compare/${built!.digest}/${variant.digest}`);
  await page.waitForSelector('#compare-table');
  const expected = await compare(built!.indexPath, variant.indexPath);
  const shares = await page.locator('#compare-table td.share').allTextContents();
  t.deepEqual(shares, [expected.a.shareInOther, expected.b.shareInOther].map((x) => `${(x * 100).toFixed(1)} %`));
  t.true(expected.a.shareInOther > 0.5 && expected.a.shareInOther < 1, `share ${expected.a.shareInOther}`);
  t.is(await page.locator('#compare-result svg.chart rect').count(), 4);
  // Which packages differ: only in one, or at another version.
  await page.waitForSelector('#package-diff-table');
  t.regex(await page.textContent('#package-diff p') ?? '', new RegExp(`^3 differ, ${installed.length - 2} the same$`));
  const dpkg = installed.find((p) => p.name === 'dpkg')!.version;
  const hello = installed.find((p) => p.name === 'hello')!.version;
  t.deepEqual(await page.locator('#package-diff-table tbody tr').allTextContents(), [`dpkg${dpkg}9.9`, `hello${hello}—`, 'zz-extra—1.0']);
  await shot(page, '5-compare');

  // Stages.
  await page.goto(`${server.url}/#/stages`);
  await page.waitForSelector('#stage-tree');
  await shot(page, '6-stages');

  // Transfer: push the built image to a real receiver on loopback and watch the charts.
  const receiver = new Receiver({ repo: join(dir, 'remote'), token: 'e2e-remote-token' });
  const addr = await receiver.listen('127.0.0.1', 0);
  t.teardown(() => receiver.close());
  await page.goto(`${server.url}/#/transfer`);
  await page.waitForSelector('#push-image');
  await page.selectOption('#push-image', built!.digest);
  await page.fill('#push-address', `127.0.0.1:${addr.port}`);
  await page.fill('#push-token', 'e2e-remote-token');
  await page.click('#push-run');
  await page.waitForFunction(() => /succeeded|failed/.test(document.querySelector('#transfer-state')?.textContent ?? ''), undefined, { timeout: 120_000 });
  t.regex(await page.textContent('#transfer-state') ?? '', /succeeded/);
  t.is(await page.locator('#transfer-charts svg.chart').count(), 2);
  t.regex(await page.textContent('#transfer-result') ?? '', /blocks sent/);
  t.deepEqual(Repository.open(join(dir, 'remote')).list().map((i) => i.digest), [built!.digest]);
  await page.waitForFunction(() => document.querySelectorAll('#recent-transfers li').length === 1 && /succeeded/.test(document.querySelector('#recent-transfers')?.textContent ?? ''));
  await shot(page, '7-transfer');
  // The same push again: nothing to send, so a sentence instead of empty charts; the recent list grows without a reload.
  await page.click('#push-run');
  await page.waitForFunction(() => /nothing sent/.test(document.querySelector('#transfer-result')?.textContent ?? ''), undefined, { timeout: 120_000 });
  t.is(await page.locator('#transfer-charts svg.chart').count(), 0);
  await page.waitForFunction(() => document.querySelectorAll('#recent-transfers li').length === 2);

  // Pull: a second node (its own repository and token) pulls the image from this one in its GUI.
  const otherRepo = join(dir, 'other');
  const other = await serve({ repo: otherRepo, tokenFile: join(dir, 'other-token'), workDir: join(dir, 'other-work'), stages: join(dir, 'other-stages'), pull: false });
  t.teardown(() => other.close());
  await page.goto(`${other.url}/`);
  await page.waitForSelector('#login');
  await page.fill('#token', other.web.token.value);
  await page.click('#login button');
  await page.waitForSelector('#distribution');
  await page.goto(`${other.url}/#/transfer`);
  await page.waitForSelector('#pull-url');
  await page.fill('#pull-url', `${server.url}/images/e2e-hello.tar`);
  await page.click('#pull-run');
  await page.waitForFunction(() => /succeeded|failed/.test(document.querySelector('#transfer-state')?.textContent ?? ''), undefined, { timeout: 120_000 });
  t.regex(await page.textContent('#transfer-state') ?? '', /succeeded/, await page.textContent('#transfer-result') ?? '');
  t.is(await page.locator('#transfer-charts svg.chart').count(), 2);
  t.regex(await page.textContent('#transfer-result') ?? '', /blocks fetched/);
  t.deepEqual(Repository.open(otherRepo).list().map((i) => i.digest), [built!.digest]);
  await shot(page, '7b-transfer-pull');

  // Delete the variant from its repository page.
  await page.goto(`${server.url}/#/repository/${variant.digest}`);
  await page.waitForSelector('#delete');
  await page.click('#delete');
  await page.waitForURL(/#\/repository$/);
  await page.waitForSelector('#images');
  t.false((await page.textContent('#images'))!.includes('variant.tar'));
  t.deepEqual(Repository.open(repoPath).list().map((i) => i.name), ['e2e-hello.tar']);
  await shot(page, '8-repository-after-delete');

  // A narrow screen: tables scroll inside their cards, the page itself does not overflow.
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(`${server.url}/#/repository`);
  await page.waitForSelector('#images');
  t.true(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no horizontal overflow at 375 px');
  await shot(page, '8b-repository-narrow');
  await page.setViewportSize({ width: 1280, height: 900 });

  // The API docs: each operation can be tried from the page (the GUI session authorizes it).
  await page.goto(`${server.url}/api/docs`);
  const op = page.locator('section.op[data-method="GET"][data-path="/api/images/{ref}"]');
  await op.locator('summary').click();
  await op.locator('input[name="ref"]').fill('e2e-hello.tar');
  await op.locator('button.primary').click();
  await page.waitForFunction(() => /\n200 /.test(document.querySelector('section.op[data-path="/api/images/{ref}"] pre.try-answer')?.textContent ?? ''));
  t.true((await op.locator('pre.try-answer').textContent())!.includes(`"digest": "${built!.digest}"`));
  await shot(page, '9-api-docs');
  t.deepEqual(pageErrors, []);
});

test('read-only browsing in the browser: pages open without the token, changes are refused', async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = tempDir(t, 'osfarm-web-ro-');
  const repoPath = join(dir, 'repo');
  const file = join(dir, 'data.img');
  writeFileSync(file, pseudoRandom(64 * 4096, 7));
  const image = Repository.init(repoPath).addSync(file, { name: 'data.img' });
  const server = await serve({ repo: repoPath, tokenFile: join(dir, 'token'), workDir: join(dir, 'work'), stages: join(dir, 'stages'), readOnly: true, pull: false });
  t.teardown(() => server.close());
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(`${server.url}/#/repository/${image.digest}`);
  await page.waitForSelector('#images');
  t.regex(await page.textContent('#session') ?? '', /read-only/);
  t.regex(await page.textContent('#images') ?? '', /data\.img/);
  t.true(await page.isDisabled('#delete'));
  // The API refuses the change even if the page is bypassed.
  const r = await page.evaluate(async (d) => (await fetch(`/api/images/${d}`, { method: 'DELETE' })).status, image.digest);
  t.is(r, 401);
  await shot(page, 'readonly-repository');
  await page.goto(`${server.url}/#/compose`);
  await page.waitForSelector('#spec-digest');
  await page.click('#build');
  await page.waitForSelector('#notice:not([hidden])');
  t.regex(await page.textContent('#notice') ?? '', /OSFARM_UNAUTHORIZED/);
  t.deepEqual(Repository.open(repoPath).list().map((i) => i.digest), [image.digest]);
});

test('tags in the browser: the repository lists every tag; an image page adds one (a moved one says so) and removes one', async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = tempDir(t, 'osfarm-web-tags-');
  const repoPath = join(dir, 'repo');
  const repo = Repository.init(repoPath);
  writeFileSync(join(dir, 'a.img'), pseudoRandom(16 * 4096, 8));
  writeFileSync(join(dir, 'b.img'), pseudoRandom(16 * 4096, 9));
  const a = repo.addSync(join(dir, 'a.img'), { name: 'a.img', tags: ['stable'] });
  const b = repo.addSync(join(dir, 'b.img'), { name: 'b.img' });
  const server = await serve({ repo: repoPath, tokenFile: join(dir, 'token'), workDir: join(dir, 'work'), stages: join(dir, 'stages'), pull: false });
  t.teardown(() => server.close());
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  t.teardown(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // Logged in on the image's page itself (the compose page would start probing the archive).
  await page.goto(`${server.url}/#/repository/${b.digest}`);
  await page.waitForSelector('#login');
  await page.fill('#token', server.web.token.value);
  await page.click('#login button');
  await page.waitForSelector('#image-tags');
  t.regex(await page.textContent(`#images tr[data-digest="${a.digest}"]`) ?? '', /a\.img, stable/);
  // "stable" moves from a to b: the page is drawn again and says so.
  await page.fill('#new-tag', 'stable');
  await page.click('#add-tag');
  await page.waitForFunction(() => /stable/.test(document.querySelector('#image-tags')?.textContent ?? ''));
  await page.waitForSelector('#notice:not([hidden])');
  t.regex(await page.textContent('#notice') ?? '', /tag stable moved here from/);
  t.regex(await page.textContent(`#images tr[data-digest="${b.digest}"]`) ?? '', /b\.img, stable/);
  t.notRegex(await page.textContent(`#images tr[data-digest="${a.digest}"]`) ?? '', /stable/);
  await shot(page, 'tags-moved');
  await page.click('#image-tags button[data-untag="b.img"]');
  await page.waitForFunction(() => !/b\.img/.test(document.querySelector('#image-tags')?.textContent ?? ''));
  t.deepEqual(Repository.open(repoPath).resolve(b.digest).tags, ['stable']);
  // The page drawn again asks for the spec last: let it answer before the server and the
  // directory go (a late request would make the repository again).
  await page.waitForFunction(() => /spec JSON/.test(document.querySelector('#image-view')?.textContent ?? ''));
  await page.close();
  t.deepEqual(pageErrors, []);
});
