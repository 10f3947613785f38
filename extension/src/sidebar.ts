/** The mlplat sidebar: Features, Models and Jobs, reloaded whenever it is shown and on Refresh. */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { h } from './dom';
import { FeaturesSection } from './features';
import { JobsSection } from './jobs';
import { ModelsSection } from './models';

export const mlplatIcon = new LabIcon({
  name: 'mlplat-lab:icon',
  svgstr: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">'
    + '<circle cx="5" cy="6" r="3"/><circle cx="19" cy="6" r="3"/><circle cx="12" cy="18" r="3"/>'
    + '<path d="M6 8l5 8h2l5-8-1.5-1L12 14 7.5 7z"/></g></svg>'
});

export class MlplatSidebar extends Widget {
  private readonly sections = [new FeaturesSection(), new ModelsSection(), new JobsSection()];

  constructor() {
    super();
    this.id = 'mlplat-sidebar';
    this.addClass('mlplat-sidebar');
    this.title.icon = mlplatIcon;
    this.title.caption = 'mlplat: features, models, jobs';
    const refresh = h('button', 'jp-mod-styled mlplat-refresh', 'Refresh');
    refresh.addEventListener('click', () => void this.refresh());
    this.node.append(h('header', 'mlplat-header', h('b', '', 'mlplat'), refresh), ...this.sections.map(s => s.node));
  }

  async refresh(): Promise<void> {
    await Promise.all(this.sections.map(section => section.refresh()));
  }

  protected onAfterShow(): void {
    void this.refresh();
  }
}
