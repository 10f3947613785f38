/** The Jobs section: notebook schedules and the most recent job runs. */
import { IJobRun, ISchedule, requestAPI } from './api';
import { basename, fill, h, when } from './dom';

export class JobsSection {
  readonly node = h('section', 'mlplat-section mlplat-jobs');
  private readonly schedules = h('ul', 'mlplat-list');
  private readonly runs = h('ul', 'mlplat-list');

  constructor() {
    this.node.append(h('h3', '', 'Jobs'), h('h4', '', 'Schedules'), this.schedules, h('h4', '', 'Recent runs'), this.runs);
  }

  async refresh(): Promise<void> {
    await Promise.all([
      fill(this.schedules, async () => listOf(await requestAPI<ISchedule[]>('jobs/schedules'), scheduleItem, 'No schedules.')),
      fill(this.runs, async () => listOf(await requestAPI<IJobRun[]>('jobs/runs?limit=10'), runItem, 'No runs yet.'))
    ]);
  }
}

function listOf<T>(items: T[], render: (item: T) => HTMLElement, empty: string): HTMLElement[] {
  return items.length ? items.map(render) : [h('li', 'mlplat-empty', empty)];
}

function scheduleItem(schedule: ISchedule): HTMLElement {
  const parameters = Object.entries(schedule.parameters).map(([name, value]) => `${name}=${JSON.stringify(value)}`);
  return h('li', 'mlplat-schedule', h('b', '', basename(schedule.notebook)), ` #${schedule.id} `,
    h('code', '', schedule.cron), schedule.enabled ? ` next ${when(schedule.next_run)}` : ' paused',
    schedule.last_status ? `, last ${schedule.last_status}` : '', h('div', 'mlplat-metrics', parameters.join(' ')));
}

function runItem(run: IJobRun): HTMLElement {
  return h('li', `mlplat-run mlplat-${run.status}`, h('b', '', basename(run.notebook)),
    ` ${run.status} in ${run.seconds.toFixed(1)} s`, run.error ? h('div', 'mlplat-error', run.error) : '');
}
